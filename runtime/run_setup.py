"""Checks that make a misconfigured run fail before any work rather than hours into it, `--ckpt_path last`
resolution, and the memory-allocator setting the entry point applies. Each problem raises `RunSetupError`, which
`main.py` prints as one `error: ...` line."""

import ctypes
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch


class RunSetupError(RuntimeError):
    """The run cannot start as configured (devices, output folders, nothing to resume from)."""


def check_devices(accelerator, devices) -> None:
    """More devices than the machine has is an error on CPU too (each CPU "device" is a process on a core)."""
    accelerator = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    count = devices if isinstance(devices, int) else int(devices) if str(devices).isdigit() else None
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise RunSetupError(
                f"--trainer.accelerator {accelerator}: no CUDA GPU is visible to this process. "
                "Use --trainer.accelerator cpu (or auto), or check CUDA_VISIBLE_DEVICES."
            )
        if count and count > available:
            raise RunSetupError(
                f"--trainer.devices {count}: this machine has {available} visible GPU(s). "
                f"Use --trainer.devices {available} (or -1 for all of them)."
            )
    elif accelerator == "cpu" and count and count > (cores := len(os.sched_getaffinity(0))):
        raise RunSetupError(
            f"--trainer.devices {count} on CPU starts {count} processes, but this process may use "
            f"{cores} cores. Use at most --trainer.devices {cores}."
        )


def resolve_last_checkpoint(subcommand: str, config) -> None:
    """`--ckpt_path last` is the `last.ckpt` of the newest `version_N` of the run (the logger's save_dir and name)
    that holds one, or of the version the logger names. `fit` continues that version, logging into the same folder
    (Lightning alone would look in a new, empty version folder and silently start from scratch); `validate`, `test`
    and `predict` read it and log into a new version. Sets `config.ckpt_path` to the file."""
    logger = config.trainer.get("logger")
    if not (hasattr(logger, "class_path") and logger.class_path.endswith("TensorBoardLogger")):
        return
    args = logger.init_args
    root = Path(args.save_dir) / (args.get("name") or "lightning_logs")
    if subcommand == "fit" and args.get("version") is not None:  # the folder TensorBoardLogger gives that version
        folders = [root / (args.version if isinstance(args.version, str) else f"version_{args.version}")]
    else:
        numbered = {int(f.name[8:]): f for f in root.glob("version_*") if re.fullmatch(r"version_\d+", f.name)}
        folders = [numbered[number] for number in sorted(numbered, reverse=True)]
    found = [folder for folder in folders if (folder / "checkpoints" / "last.ckpt").is_file()]
    if not found:
        where = folders[0] if len(folders) == 1 else root / "version_*"
        remedy = "start without --ckpt_path" if subcommand == "fit" else "train first"
        raise RunSetupError(
            f"--ckpt_path last: there is no last checkpoint under {where}/checkpoints/; {remedy}, or give the "
            "checkpoint file's path"
        )
    if subcommand == "fit" and args.get("version") is None:
        args.version = int(found[0].name[8:])
    config.ckpt_path = str(found[0] / "checkpoints" / "last.ckpt")


def checkpoint_bytes(model) -> int:
    """Rough size of one training checkpoint: weights plus two Adam moments, float32."""
    return 3 * 4 * sum(p.numel() for p in model.parameters())


def existing_ancestor(folder: Path) -> Path:
    """`folder`, or the nearest folder above it that exists (what creating it would write into)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_output_folders(trainer, needed_bytes: int, extra_folders: Mapping[Path, str] | None = None) -> None:
    """Log and checkpoint folders (and `extra_folders`, each with the setting that names it) must be writable, with
    room for a few checkpoints, before any work starts. Checked without creating them (a refused run leaves nothing
    behind): in each folder, or in the nearest folder above it that exists. Checked by global rank 0 only, the
    process that writes them."""
    if not trainer.is_global_zero:
        return
    folders = {Path(trainer.default_root_dir): "--trainer.default_root_dir"}
    if trainer.logger is not None:
        root = getattr(trainer.logger, "root_dir", None) or trainer.logger.save_dir
        folders = {Path(root): "--trainer.logger.init_args.save_dir"}
    for callback in trainer.checkpoint_callbacks:
        if callback.dirpath:
            folders[Path(callback.dirpath)] = "--checkpoint.dirpath"
    folders.update(extra_folders or {})
    for folder, setting in folders.items():
        nearest = existing_ancestor(folder)
        try:
            if not nearest.is_dir():
                raise NotADirectoryError(20, f"{nearest.name} is a file")
            with tempfile.NamedTemporaryFile(dir=nearest, prefix=".write-test-"):
                pass
        except OSError as error:
            raise RunSetupError(
                f"cannot write to {folder} ({error.strerror or error}): choose another {setting} or fix its permissions"
            ) from error
        free = shutil.disk_usage(nearest).free
        if free < 3 * needed_bytes:
            raise RunSetupError(
                f"only {free / 2**20:.0f} MiB free on the disk of {folder}, and each checkpoint "
                f"needs about {needed_bytes / 2**20:.0f} MiB. Free some space or log elsewhere."
            )


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed tensor memory instead of handing it back to the operating system.

    By default glibc serves large blocks with mmap and returns them on free, so every step of the PixelCNN
    faults in and zeroes fresh pages for its activations again (in evaluation too, where activations are freed
    layer by layer). Raising the mmap and trim thresholds keeps that memory in the process; the numbers are
    unchanged, the steps are faster (the page faults and times: docs/performance.md, "Page faults"). Returns
    whether the setting took effect; on other C libraries it does nothing.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    mmap_ok = any(mallopt(m_mmap_threshold, size) for size in (2**30, 2**25))
    return bool(mmap_ok and mallopt(m_trim_threshold, 2**31 - 1))


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with a file that cannot be a whole checkpoint, read from its first and last bytes: empty, cut
    off (a zip archive, as torch writes, whose closing directory is missing: an interrupted copy or save), or of
    another format; None when it may be one."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start == b"PK\x03\x04":
        return None if zipfile.is_zipfile(path) else f"the file is incomplete, cut off after {size:,} bytes"
    if start[:1] != b"\x80":  # neither torch's zip format nor its older pickle format
        return "not a file that torch.save writes"
    return None


def check_checkpoint_file(ckpt_path) -> dict | None:
    """A `--ckpt_path` that names a file must be a readable PyTorch checkpoint (LightningCLI reads its
    hyper-parameters, with torch's safe loader, before anything else); returns it. Special values (`last`, `best`)
    pass, returning None."""
    if ckpt_path is None or str(ckpt_path) in ("last", "best", "hpc", "registry"):
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise RunSetupError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    if damage := checkpoint_damage(path):
        raise RunSetupError(f"--ckpt_path {ckpt_path} is not a readable checkpoint: {damage}; it was not loaded")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        text = str(error)
        # torch's safe loader names the refused content after "WeightsUnpickler error:"; the rest is advice
        if "WeightsUnpickler error:" in text:
            text = text.split("WeightsUnpickler error:", 1)[1]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = lines[0].split(". ")[0][:120] if lines else type(error).__name__  # torch's advice left out
        raise RunSetupError(
            f"--ckpt_path {ckpt_path} is not a readable checkpoint: {reason}; it was not "
            "loaded (only files written by this project's runs are)"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RunSetupError(f"--ckpt_path {ckpt_path} is not a Lightning checkpoint (it holds no state_dict)")
    return checkpoint
