"""Run `python -m minidino demo` with a changed built-in dataset style or an extra augmentation.

The demo's command line overrides any `TrainConfig` field, but not how the built-in shapes are
drawn. This script does both, for the experiments listed in docs/benchmarks.md:

    python -m tools.demo_variants '{"name": "light-noisy", "epochs": 3,
        "style": {"contrast": 0.9, "polarity": "light", "pixel_noise": 0.3, "blotch_noise": 0.3}}'

Keys of the JSON object: "name" (the run folder under runs/variants/), "style" (fields of
`ShapesStyle` replacing those of the "easy" style), "rot90" (true: every crop is also turned by a
random multiple of 90 degrees) and any `TrainConfig` field. One line of JSON with the two kNN
numbers is appended to runs/variants/results.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from minidino import augment, shapes
from minidino.demo import run_demo
from minidino.presets import PRESETS


def add_rot90(crop_class: type) -> None:
    """Wrap `crop_class.apply` so that each crop (B, 3, S, S) is turned by k * 90 degrees, k
    drawn per image from the global RNG."""
    apply = crop_class.apply

    def apply_and_turn(self, images: Tensor, params: list) -> list[Tensor]:
        out = []
        for crops in apply(self, images, params):  # each (B, 3, S, S)
            turns = torch.randint(0, 4, (crops.shape[0],))  # (B,)
            crops = crops.clone()
            for k in (1, 2, 3):
                if (chosen := turns == k).any():
                    crops[chosen] = torch.rot90(crops[chosen], k, dims=(2, 3))
            out.append(crops)
        return out

    crop_class.apply = apply_and_turn


def main(spec: dict) -> dict:
    name, style, rot90 = spec.pop("name"), spec.pop("style", {}), spec.pop("rot90", False)
    if style:
        shapes.SHAPES_STYLES["easy"] = dataclasses.replace(shapes.SHAPES_STYLES["easy"], **style)
    if rot90:
        add_rot90(augment.BatchedMultiCrop)
    out_dir = Path("runs/variants")
    cfg = dataclasses.replace(PRESETS["cpu-demo"], run_name=name, out_dir=str(out_dir), **spec)
    result = run_demo(cfg, progress=False)
    line = {"name": name, "style": style, "rot90": rot90, "overrides": spec,
            "random_init": round(result["random_init"]["top1"], 1),
            "trained": round(result["trained"]["top1"], 1), "gain": round(result["gain"], 1),
            "steps": result["steps"], "train_seconds": round(result["train_seconds"])}
    with open(out_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return line


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(main(json.loads(sys.argv[1])))
