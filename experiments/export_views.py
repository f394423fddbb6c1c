"""The latest TensorBoard image or text of each tag as a file, for reports and READMEs:

    python -m experiments.export_views LOG_DIR TAG [TAG ...] --out FOLDER

An image tag becomes `<out>/<last part of tag>.png`, a text tag (`add_text`: text samples, homotopies)
`<out>/<last part of tag>.md` with the Markdown as logged, e.g. `python -m experiments.export_views
results/four_models_cpu/runs/skipvae_seed1/test test/latent_traversals test/interpolations --out docs/results/x`
writes `latent_traversals.png` and `interpolations.png`.
"""

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TEXT_SUFFIX = "/text_summary"  # where TensorBoard's text plugin keeps the tensor of add_text(tag, ...)


def export_views(log_dir: Path, tags: list[str], out: Path) -> list[Path]:
    """Writes one file per tag (PNG for images, Markdown for text); raises KeyError naming a tag the events lack."""
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    images, texts = (
        events.Tags()["images"],
        [t.removesuffix(TEXT_SUFFIX) for t in events.Tags()["tensors"] if t.endswith(TEXT_SUFFIX)],
    )
    missing = [tag for tag in tags if tag not in images and tag not in texts]
    if missing:
        raise KeyError(
            f"{log_dir} has no image or text {missing[0]!r} (it has: {', '.join(sorted([*images, *texts])) or 'none'})"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for tag in tags:
        name = tag.rsplit("/", 1)[-1]
        if tag in images:
            path = out / f"{name}.png"
            path.write_bytes(events.Images(tag)[-1].encoded_image_string)
        else:
            path = out / f"{name}.md"
            path.write_text(events.Tensors(tag + TEXT_SUFFIX)[-1].tensor_proto.string_val[0].decode() + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", type=Path, help="folder with TensorBoard event files")
    parser.add_argument("tags", nargs="+", help="image or text tags, e.g. test/latent_traversals val/samples")
    parser.add_argument("--out", type=Path, required=True, help="folder for the files")
    args = parser.parse_args(argv)
    try:
        for path in export_views(args.log_dir, args.tags, args.out):
            print(f"wrote {path}")
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
