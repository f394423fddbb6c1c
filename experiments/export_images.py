"""The latest TensorBoard image of each tag as a PNG file (for reports and READMEs):

    python -m experiments.export_images LOG_DIR TAG [TAG ...] --out FOLDER

e.g. `python -m experiments.export_images results/four_models_cpu/runs/skipvae_seed1/test test/latent_traversals
test/interpolations --out docs/results/four_models_cpu` writes `latent_traversals.png` and `interpolations.png`.
"""

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def export_images(log_dir: Path, tags: list[str], out: Path) -> list[Path]:
    """Writes `<out>/<last part of tag>.png` for each tag; raises KeyError naming a tag the events lack."""
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    written = []
    for tag in tags:
        if tag not in events.Tags()["images"]:
            raise KeyError(f"{log_dir} has no image {tag!r} (it has: {', '.join(events.Tags()['images']) or 'none'})")
        path = out / f"{tag.rsplit('/', 1)[-1]}.png"
        out.mkdir(parents=True, exist_ok=True)
        path.write_bytes(events.Images(tag)[-1].encoded_image_string)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", type=Path, help="folder with TensorBoard event files")
    parser.add_argument("tags", nargs="+", help="image tags, e.g. test/latent_traversals")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    args = parser.parse_args(argv)
    try:
        for path in export_images(args.log_dir, args.tags, args.out):
            print(f"wrote {path}")
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
