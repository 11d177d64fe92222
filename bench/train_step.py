#!/usr/bin/env python
"""Cost of one training iteration: ``nnUNetTrainerMultitask`` against stock ``nnUNetTrainer``.

Both trainers are built on the same dataset, plans, configuration, fold and device, and
``initialize()``d; the multitask network gets the stock network's weights (its head is the only
extra). One fixed list of batches is drawn once from the multitask trainer's training dataloader
(``nnUNet_n_proc_DA=0``, seeded), so data loading and augmentation are outside the timings and both
trainers step on identical tensors. Only ``trainer.train_step(batch)`` is timed (forward, loss,
backward, gradient clipping, SGD step; on CUDA between ``torch.cuda.synchronize()`` calls). The
two trainers alternate within each repeat, and the order flips every repeat (A B, B A, A B, ...),
so machine noise and order effects hit both equally.

Peak memory is measured in one fresh child process per trainer (same batches, saved to a file):

* CUDA: ``torch.cuda.max_memory_allocated()`` over the steps (parameters, gradients, optimizer
  state and activations; the child holds only that trainer).
* CPU: the resident-set peak (``VmHWM``) reached during the steps minus the resident set just
  before them, with the peak reset through ``/proc/self/clear_refs`` (Linux); this is the memory
  the steps add (activations, gradients, optimizer state) without torch's fixed library overhead.
  The children run with ``MALLOC_MMAP_THRESHOLD_=65536`` (unless already set): with glibc's default
  dynamic threshold the peak depends on heap fragmentation and varied by +-15% between identical
  runs; with a fixed one every tensor is its own mapping and the peak is reproducible to 0.1 MiB.
  The child's whole-process ``ru_maxrss`` is printed too.

Without ``--dataset`` a small synthetic dataset is generated, converted, fingerprinted, given the
committed plans and preprocessed, all in a temporary folder. ``nnUNet_results`` always points to a
temporary folder (the trainers create their log folders on construction); everything temporary is
removed at the end unless ``--keep-tmp``.

Target: multitask / stock <= 1.05 for the median step time and for peak memory.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scratch import scratch_folder  # bench/ is on sys.path when a benchmark runs as a script

TARGET_RATIO = 1.05
#: glibc ``MALLOC_MMAP_THRESHOLD_`` (bytes) for the CPU memory children.
MMAP_THRESHOLD = 65536
PLANS_DEFAULT = "nnUNetResEncUNetMPlans"
SYNTH_ID, SYNTH_NAME = 990, "BenchTrainStep"
CHILD_MARKER = "BENCH_MEMORY_RESULT "
KINDS = ("stock", "multitask")
LABELS = {"stock": "nnUNetTrainer", "multitask": "nnUNetTrainerMultitask"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="dataset ID or name in $nnUNet_preprocessed (already preprocessed with "
                                     "--plans/--configuration); default: build a small synthetic one in a temp folder")
    p.add_argument("--configuration", default="3d_tiny")
    p.add_argument("--plans", default=PLANS_DEFAULT)
    p.add_argument("--fold", default=5, type=int, help="fold of splits_final.json (5 = the dataset's train/val split)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--warmup", default=2, type=int, help="untimed steps per trainer before timing")
    p.add_argument("--repeats", default=10, type=int, help="timed steps per trainer")
    p.add_argument("--memory-steps", default=3, type=int, help="steps per trainer in each memory child")
    p.add_argument("--threads", default=None, type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--skip-memory", action="store_true", help="time only")
    p.add_argument("--check", action="store_true", help="exit 1 when a ratio exceeds the target")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (printed)")
    # internal: memory measurement in a child process
    p.add_argument("--_memory-child", dest="memory_child", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--_batches", dest="batches", help=argparse.SUPPRESS)
    p.add_argument("--_dataset-name", dest="dataset_name", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout)
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(cmd)}")


def build_synthetic_dataset(tmp: Path, plans: str, configuration: str, num_processes: int) -> str:
    """Synthetic raw set -> nnUNet_raw -> fingerprint -> committed plans -> preprocessed, under ``tmp``.
    The nnUNet_* variables must already point into ``tmp``. Returns the dataset name."""
    from nnunet_multitask.conversion import convert_dataset
    from nnunet_multitask.plans import install_plans
    from nnunet_multitask.synthetic import SyntheticConfig, generate_dataset

    generate_dataset(tmp / "synthetic", SyntheticConfig(seed=0, train_per_subtype=2, val_per_subtype=1, n_test=0))
    target = convert_dataset(tmp / "synthetic", SYNTH_ID, SYNTH_NAME, num_processes=1, progress=False)
    bin_dir = Path(sys.executable).parent
    _run([str(bin_dir / "nnUNetv2_extract_fingerprint"), "-d", str(SYNTH_ID), "-np", str(num_processes)])
    install_plans(SYNTH_ID, plans)
    _run([str(bin_dir / "nnUNetv2_preprocess"), "-d", str(SYNTH_ID), "-plans_name", plans, "-c", configuration,
          "-np", str(num_processes)])
    return target.name


# ----------------------------------------------------------------------------- trainers
def make_trainer(kind: str, dataset_name: str, args):
    """An ``initialize()``d trainer; its console chatter is swallowed (it still goes to its log file)."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_multitask.trainer import nnUNetTrainerMultitask

    folder = Path(nnUNet_preprocessed) / dataset_name
    plans = json.loads((folder / f"{args.plans}.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8's run_training adds this key; the trainer pops it
    dataset_json = json.loads((folder / "dataset.json").read_text())
    cls = nnUNetTrainerMultitask if kind == "multitask" else nnUNetTrainer
    torch.manual_seed(args.seed)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = cls(plans, args.configuration, args.fold, dataset_json, torch.device(args.device))
        trainer.initialize()
    trainer.network.train()
    return trainer


def draw_batches(trainer, n: int, seed: int) -> list[dict]:
    """``n`` training batches from the trainer's own dataloader (augmented, deep-supervision targets)."""
    import numpy as np
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        loader_train, _ = trainer.get_dataloaders()
    return [next(loader_train) for _ in range(n)]


def copy_weights(stock, multitask) -> None:
    """Give the multitask network the stock network's weights (everything but the head)."""
    missing, unexpected = multitask.network.load_state_dict(stock.network.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("subtype_head.") for k in missing), (missing, unexpected)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def timed_step(trainer, batch: dict, device: str) -> float:
    """Milliseconds of one ``train_step``."""
    _sync(device)
    start = time.perf_counter()
    trainer.train_step(batch)
    _sync(device)
    return (time.perf_counter() - start) * 1e3


# ----------------------------------------------------------------------------- memory (child process)
def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(args) -> int:
    """Run ``--memory-steps`` steps of one trainer and print its peak memory as a JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = make_trainer(args.memory_child, args.dataset_name, args)
    batches = torch.load(args.batches, weights_only=False)
    gc.collect()
    result = {"kind": args.memory_child}
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _proc_status_kib("VmRSS")
        result["peak_reset"] = _reset_peak_rss()
    for i in range(args.memory_steps):
        trainer.train_step(batches[i % len(batches)])
    if args.device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        result.update(before_mib=before / 2**20, peak_mib=peak / 2**20, delta_mib=(peak - before) / 2**20)
    else:
        peak = _proc_status_kib("VmHWM")
        result.update(before_mib=before / 1024, peak_mib=peak / 1024, delta_mib=(peak - before) / 1024)
    result["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return 0


def measure_memory(kind: str, batches_file: Path, dataset_name: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", kind, "--_batches", str(batches_file),
           "--_dataset-name", dataset_name, "--configuration", args.configuration, "--plans", args.plans,
           "--fold", str(args.fold), "--device", args.device, "--memory-steps", str(args.memory_steps),
           "--seed", str(args.seed)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    if args.device == "cpu":
        # glibc's dynamic mmap threshold makes the RSS peak depend on allocation history (+-15% between
        # identical runs); a fixed threshold maps every large tensor on its own, so RSS follows live bytes.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith(CHILD_MARKER)]
    if result.returncode != 0 or not lines:
        sys.stderr.write(result.stdout + result.stderr)
        raise RuntimeError(f"memory child for {kind} failed ({result.returncode})")
    return json.loads(lines[-1][len(CHILD_MARKER):])


# ----------------------------------------------------------------------------- main
def _verdict(ratio: float) -> str:
    return "PASS" if ratio <= TARGET_RATIO else "FAIL"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)

    given_preprocessed = os.environ.get("nnUNet_preprocessed")
    if args.dataset and not given_preprocessed:
        print("error: --dataset needs nnUNet_preprocessed to be set", file=sys.stderr)
        return 2
    with scratch_folder("bench_train_step_", args.keep_tmp) as tmp:
        # the trainers create their log folders on construction: keep them in the scratch folder
        os.environ["nnUNet_results"] = str(tmp / "nnUNet_results")
        os.environ["nnUNet_n_proc_DA"] = "0"
        if not args.dataset:
            os.environ["nnUNet_raw"] = str(tmp / "nnUNet_raw")
            os.environ["nnUNet_preprocessed"] = str(tmp / "nnUNet_preprocessed")
        for name in ("nnUNet_results", "nnUNet_raw", "nnUNet_preprocessed"):
            if name in os.environ and str(tmp) in os.environ[name]:
                Path(os.environ[name]).mkdir(parents=True, exist_ok=True)
        return _benchmark(args, tmp)


def _benchmark(args, tmp: Path) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.dataset:
        from nnunet_multitask.plans import resolve_dataset_name
        dataset_name = resolve_dataset_name(args.dataset, Path(os.environ["nnUNet_preprocessed"]))
        origin = f"{dataset_name} from {os.environ['nnUNet_preprocessed']}"
    else:
        dataset_name = build_synthetic_dataset(tmp, args.plans, args.configuration,
                                               num_processes=max(1, min(2, os.cpu_count() or 1)))
        origin = f"{dataset_name} (synthetic, 9 cases, built in {tmp}, {time.perf_counter() - t0:.0f} s)"

    trainers = {kind: make_trainer(kind, dataset_name, args) for kind in KINDS}
    copy_weights(trainers["stock"], trainers["multitask"])
    n_batches = args.warmup + args.repeats
    batches = draw_batches(trainers["multitask"], n_batches, args.seed)
    cm = trainers["stock"].configuration_manager
    n_params = {k: sum(p.numel() for p in t.network.parameters()) for k, t in trainers.items()}

    print(f"date           {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine        {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"device {args.device}" + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else ""))
    print(f"torch          {torch.__version__}, {torch.get_num_threads()} threads, "
          f"compile {'on' if trainers['stock']._do_i_compile() else 'off'}")
    print(f"dataset        {origin}")
    print(f"setup          plans {args.plans}, configuration {args.configuration}, fold {args.fold}, "
          f"patch {list(cm.patch_size)}, batch {trainers['stock'].batch_size}, deep supervision on")
    print(f"parameters     stock {n_params['stock']:,}, multitask {n_params['multitask']:,} "
          f"(+{n_params['multitask'] - n_params['stock']:,} head)")
    print(f"steps          {args.warmup} warm-up + {args.repeats} timed per trainer, alternating (order flips "
          f"every repeat), {n_batches} fixed batches")

    memory = {}
    if not args.skip_memory:
        batches_file = tmp / "batches.pt"
        torch.save(batches, batches_file)
        # one child at a time, before the timing, so that they never compete with it for the CPU
        memory = {kind: measure_memory(kind, batches_file, dataset_name, args) for kind in KINDS}

    times = {kind: [] for kind in KINDS}
    for i in range(n_batches):
        order = KINDS if i % 2 == 0 else KINDS[::-1]
        for kind in order:
            ms = timed_step(trainers[kind], batches[i], args.device)
            if i >= args.warmup:
                times[kind].append(ms)

    print()
    mem_head = ("peak alloc MiB" if args.device == "cuda" else "step RSS MiB  process RSS MiB") if memory else ""
    print(f"{'trainer':<24}{'median ms':>11}{'mean ms':>10}{'min ms':>9}{'max ms':>9}   {mem_head}")
    for kind in KINDS:
        t = times[kind]
        line = (f"{LABELS[kind]:<24}{statistics.median(t):>11.1f}{statistics.mean(t):>10.1f}"
                f"{min(t):>9.1f}{max(t):>9.1f}   ")
        if memory:
            m = memory[kind]
            line += (f"{m['peak_mib']:>14.1f}" if args.device == "cuda"
                     else f"{m['delta_mib']:>12.1f}{m['ru_maxrss_mib']:>17.1f}")
        print(line)
    time_ratio = statistics.median(times["multitask"]) / statistics.median(times["stock"])
    paired = [m / s for m, s in zip(times["multitask"], times["stock"])]
    print()
    print(f"time ratio   multitask/stock (median step) {time_ratio:.3f}  {_verdict(time_ratio)} (target <= {TARGET_RATIO})"
          f"   [median of paired ratios {statistics.median(paired):.3f}, mean-step ratio "
          f"{statistics.mean(times['multitask']) / statistics.mean(times['stock']):.3f}, min-step ratio "
          f"{min(times['multitask']) / min(times['stock']):.3f}]")
    verdicts = [time_ratio <= TARGET_RATIO]
    if memory:
        key = "peak_mib" if args.device == "cuda" else "delta_mib"
        mem_ratio = memory["multitask"][key] / memory["stock"][key]
        what = ("torch.cuda.max_memory_allocated per child process" if args.device == "cuda"
                else "peak RSS added by the steps (VmHWM - VmRSS before), one child process per trainer, "
                     f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', MMAP_THRESHOLD)}"
                + ("" if all(m.get("peak_reset") for m in memory.values()) else "; WARNING: peak reset failed"))
        print(f"memory ratio multitask/stock               {mem_ratio:.3f}  {_verdict(mem_ratio)} "
              f"(target <= {TARGET_RATIO})   [{what}, {args.memory_steps} steps]")
        verdicts.append(mem_ratio <= TARGET_RATIO)
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    return 1 if args.check and not all(verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
