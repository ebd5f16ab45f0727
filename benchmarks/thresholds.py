"""Do other reconstruction thresholds suit a model better than the defaults? Checked on train images, not val.

    python benchmarks/thresholds.py --data ../shared/data/nuclei/train --model nuclei_small

Picks a fixed subset of DATA (every 40th fluorescence image, every 8th colour and every 2nd brightfield
image in DATA/index.csv order), runs the network once per image and reconstructs masks with each
(cellprob threshold, flow threshold) pair. Prints the pooled AP@0.5 and AP@0.9 per pair, and AP@0.5
per modality. Tuning on val would make the val figures of the model card optimistic; this uses train.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

PAIRS = [(0.0, 0.4), (0.0, 0.0), (0.0, 0.8), (-1.0, 0.4), (-1.0, 0.0), (-2.0, 0.0), (1.0, 0.0)]
EVERY = {"fluorescence_gray": 40, "color_histology_or_brightfield": 8, "brightfield_gray": 2}


def main() -> None:
    import torch

    from cpsnake.engine.infer import predict
    from cpsnake.engine.normalize import normalize
    from cpsnake.engine.reconstruct import compute_masks
    from cpsnake.io.inputs import read_image
    from cpsnake.models import weights
    from cpsnake.models.registry import load_model
    from cpsnake.training.evaluate import pool, read_label_file, scores

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="split folder: images/, masks/, index.csv")
    p.add_argument("--model", default="nuclei_small")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = list(csv.DictReader(open(args.data / "index.csv")))
    pick = [r for m, k in EVERY.items() for r in [r for r in rows if r["modality"] == m][::k]]
    net = load_model(weights.resolve(args.model), device="cpu")
    results: dict = {pair: {} for pair in PAIRS}
    for r in pick:
        img, _ = read_image(args.data / "images" / r["file"])
        stem = r["file"].rsplit(".", 1)[0]
        true = read_label_file(next((args.data / "masks").glob(stem + ".*")))
        flows = predict(net, normalize(img)[0])
        for cellprob, flow in PAIRS:
            labels = compute_masks(flows, cellprob_threshold=cellprob, flow_threshold=flow)
            results[cellprob, flow].setdefault(r["modality"], []).append(scores(true, labels))
    print(f"{len(pick)} images of {args.data}, model {args.model}")
    print("cellprob  flow   AP@0.5  AP@0.9   " + "  ".join(f"{m[:12]:>12}" for m in EVERY))
    for (cellprob, flow), groups in results.items():
        everything = pool([s for g in groups.values() for s in g])
        per = "  ".join(f"{pool(groups[m])['ap@0.5']:12.3f}" if m in groups else f"{'-':>12}" for m in EVERY)
        print(f"{cellprob:8.1f}  {flow:4.1f}   {everything['ap@0.5']:.3f}   {everything['ap@0.9']:.3f}   {per}")


if __name__ == "__main__":
    main()
