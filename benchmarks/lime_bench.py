"""LIME speed: interp_ops.lime.ImageLime against the `lime` package and against the bare forward pass.

One process, one ONNX model (the demo CNN with seeded random weights, exported per image size) and the
same photos for every contender, 1000 perturbations per image:
  (a) lime's LimeImageExplainer.explain_instance, top_labels=1, its default batch_size 10
  (b) the same with batch_size=100
  (c) ImageLime end to end, segmentation included, stability_seeds=1 and heldout_samples=0 (lime's work
      plus the deletion/insertion curves); also timed with its defaults (3 stability seeds, 200 held-out)
  (d) the floor: the bare ONNX Runtime forward pass over images*1000 inputs at ImageLime's batch size
Other processes share the cores, so each contender runs in several rounds (rotating order) and its fastest
round counts. Run: .venv/bin/python benchmarks/lime_bench.py [--quick]  (writes benchmarks/results/lime.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # lime draws a progress bar per image; cosmetic, so not timed

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from _results import write_results  # noqa: E402
from skimage.color import gray2rgb, rgba2rgb  # noqa: E402
from skimage.transform import resize  # noqa: E402

from interp_ops.demo_models import DEMO_INPUT, shapes_cnn  # noqa: E402
from interp_ops.lime import ImageLime, Segmentation  # noqa: E402
from interp_ops.onnx_bundle import export_torch, make_session, softmax  # noqa: E402

PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "cat",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
    "logo",
    "retina",
    "camera",
    "moon",
    "page",
    "coins",
    "clock",
    "text",
    "brick",
    "grass",
    "gravel",
    "cell",
]
NUM_SAMPLES = 1000
MEAN, STD = np.float32(DEMO_INPUT["mean"][0]), np.float32(DEMO_INPUT["std"][0])
# lime's default quickshift (kernel_size 4) gives 1-8 segments at 64x64 (1 for rocket, which LIME cannot
# explain); kernel_size 1 gives 11-77, like the default does at 224x224. Both contenders get the same.
SEGMENTATION = {64: Segmentation(kernel_size=1), 224: Segmentation()}
# On these 2 CPU cores small batches run fastest (they stay in cache); at 224x224 a batch of 256 needs
# ~0.8 GB per activation map. ImageLime's default of 256 is for GPUs. The floor uses the same batch size.
BATCH_SIZE = {64: 64, 224: 8}


def photos(names: list[str], size: int) -> np.ndarray:
    """scikit-image's bundled photos as float32 (N, size, size, 3) in [0, 1]; gray ones repeated to RGB."""
    images = []
    for name in names:
        image = getattr(skimage.data, name)()
        image = rgba2rgb(image) if image.ndim == 3 and image.shape[-1] == 4 else image
        image = gray2rgb(image) if image.ndim == 2 else image
        images.append(resize(image, (size, size), anti_aliasing=True))
    return np.stack(images).astype(np.float32)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) in [0, 1] -> normalized float32 (N, 3, H, W), as the demo model expects."""
    return np.ascontiguousarray(((np.asarray(images, dtype=np.float32) - MEAN) / STD).transpose(0, 3, 1, 2))


def onnx_predict(size: int):
    torch.manual_seed(0)
    session = make_session(export_torch(shapes_cnn().eval(), (3, size, size), []), "cpu")
    input_name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return softmax(session.run(None, {input_name: x})[0])

    return predict


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def forward_floor(predict, size: int, total: int, batch_size: int) -> float:
    """The model alone: total inputs in batches of batch_size, nothing built, nothing fitted."""
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size)).astype(np.float32)
    full, rest = divmod(total, batch_size)
    return timed(lambda: [predict(batch) for _ in range(full)] + ([predict(batch[:rest])] if rest else []))


def lime_package(predict, display: np.ndarray, segmentation: Segmentation, batch_size: int) -> float:
    from lime.lime_image import LimeImageExplainer

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        return predict(to_model_input(images))

    def explain_all():
        for image in display:
            LimeImageExplainer(random_state=0).explain_instance(
                image,
                classifier_fn,
                top_labels=1,
                num_samples=NUM_SAMPLES,
                batch_size=batch_size,
                segmentation_fn=segmentation,
            )

    return timed(explain_all)


def ours(predict, display: np.ndarray, segmentation: Segmentation, batch_size: int, **settings) -> float:
    explainer = ImageLime(predict, batch_size=batch_size)
    return timed(
        lambda: explainer.attribute(
            to_model_input(display), display, num_samples=NUM_SAMPLES, segmentation=segmentation, **settings
        )
    )


def bench_size(size: int, names: list[str], rounds: int) -> dict:
    display = photos(names, size)
    predict = onnx_predict(size)
    segmentation, batch_size = SEGMENTATION[size], BATCH_SIZE[size]
    predict(to_model_input(display[:2]))  # warm-up: ONNX Runtime plans its first batch shapes lazily
    contenders = {
        "forward_floor": lambda: forward_floor(predict, size, len(display) * NUM_SAMPLES, batch_size),
        "ours": lambda: ours(predict, display, segmentation, batch_size, stability_seeds=1, heldout_samples=0),
        "lime_default": lambda: lime_package(predict, display, segmentation, batch_size=10),
        "lime_batch100": lambda: lime_package(predict, display, segmentation, batch_size=100),
    }
    # Other work shares these cores: rounds in rotating order, and each contender's fastest round counts.
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        order = list(contenders)[round_index % len(contenders) :] + list(contenders)[: round_index % len(contenders)]
        for name in order:
            runs[name].append(contenders[name]())
    seconds = {name: min(times) for name, times in runs.items()}
    seconds["ours_with_defaults"] = ours(predict, display, segmentation, batch_size)
    segments = [len(np.unique(segmentation(image))) for image in display]
    overhead = seconds["lime_default"] - seconds["forward_floor"]
    return {
        "images": len(display),
        "num_samples": NUM_SAMPLES,
        "batch_size": batch_size,
        "segmentation": repr(segmentation),
        "segments_mean": float(np.mean(segments)),
        "rounds": rounds,
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
        "seconds_all_rounds": {key: [round(t, 3) for t in times] for key, times in runs.items()},
        "speedup_vs_lime_default": round(seconds["lime_default"] / seconds["ours"], 3),
        "speedup_vs_lime_batch100": round(seconds["lime_batch100"] / seconds["ours"], 3),
        "overhead_vs_forward_floor": round(seconds["ours"] / seconds["forward_floor"], 3),
        "lime_overhead_removed": round((seconds["lime_default"] - seconds["ours"]) / overhead, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 images, 64x64 only; prints, writes nothing")
    parser.add_argument(
        "--rounds",
        type=int,
        nargs=2,
        default=[3, 2],
        metavar=("AT_64", "AT_224"),
        help="timing rounds per image size (default 3 2)",
    )
    args = parser.parse_args()
    names, sizes = (PHOTOS[:4], [64]) if args.quick else (PHOTOS, [64, 224])
    rounds = dict(zip([64, 224], args.rounds))
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), ONNX Runtime on CPU",
        "sizes": {},
    }
    for size in sizes:
        report["sizes"][f"{size}x{size}"] = bench_size(size, names, rounds[size])
        print(f"{size}x{size}:", json.dumps(report["sizes"][f"{size}x{size}"], indent=2), flush=True)
    write_results("lime", report, args.quick)


if __name__ == "__main__":
    main()
