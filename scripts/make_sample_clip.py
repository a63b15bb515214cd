#!/usr/bin/env python3
"""Render a clip of moving shapes and its ground truth (``<out>.json``), from a seed.

    python scripts/make_sample_clip.py --seed 7 --frames 600 --out samples/shapes.mp4

The same seed always gives the same clip. Training draws its scenes from other seeds,
so any clip seed is unseen by the demo detector.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from edged.synthetic import FRAME_HEIGHT, FRAME_WIDTH, write_clip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("samples/shapes.mp4"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--shapes", type=int, default=8, help="shapes in the scene")
    parser.add_argument("--width", type=int, default=FRAME_WIDTH)
    parser.add_argument("--height", type=int, default=FRAME_HEIGHT)
    args = parser.parse_args()
    with tqdm(total=args.frames, unit="frame", desc=f"rendering {args.out.name}", disable=None) as bar:
        write_clip(args.out, seed=args.seed, frames=args.frames, fps=args.fps, width=args.width, height=args.height,
                   shapes=args.shapes, progress=lambda done, total: bar.update(done - bar.n))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
