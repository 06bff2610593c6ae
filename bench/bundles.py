"""The benches shipped with emq, as bundles: the bench SQLite, the model's weights (an
embedded model, emq/assets) and the model's statistics, used whenever they match a request
(emq.search_space.shipped): `emq search` and `emq score --bench NAME` start in seconds and
run with no data set installed. A bundle whose data ships with emq may ship partial
statistics (without the activation fields, recomputed from the data in a second). Building,
allocating and verifying need the data.

Adding a bundle is one entry here plus its files (see the README's build commands).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from importlib import resources
from pathlib import Path

from emq.errors import EmqError


@dataclass(frozen=True)
class Bundle:
    name: str
    _: KW_ONLY
    file: str  # the bench, in emq/bench/data
    model: str  # an embedded model (emq.models.EMBEDDED_MODELS): its weights ship in emq/assets
    stats: str | None  # statistics file in emq/bench/data (None: none ships, statistics are computed)
    summary: str
    # `emq bench build` flags that rebuild it (besides --model and --out): scripts/build_zoo.py runs them
    build: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return _data_file(self.file)

    @property
    def stats_path(self) -> Path | None:
        return _data_file(self.stats) if self.stats else None


# test images per task for the zoo's builds: the smallest test set whose default-metric reliability
# (corrected split-half) stays >= 0.95 on every shipped bench of the task and every random subset
# (benchmarks/reliability_vs_images.py); Fashion-MNIST one step above its 1,000 for margin; the shapes
# task had no bench to measure, so it uses all 4,000 of its test images.
ZOO_TEST_IMAGES = {"default": 2000, "fashion-mnist": 1500, "shapes-rgb": 4000}
# where a network's bench fell short of 0.95 at its task's size: shufflenetv2-fashion reached 0.913 on
# 1,500 images, and Spearman-Brown predicts 0.966 on 4,000 (docs/zoo.md); digits networks after
# shufflenetv2-digits (0.878 on 2,000) use all 3,000 of the task's test images
BENCH_TEST_IMAGES = {"shufflenetv2-fashion": 4000, "regnet-digits": 3000}


def _zoo_recipe(name: str, data: str) -> tuple[str, ...]:
    """The zoo's build: GPTQ, 400 uniform random configurations over {2,3,4}, 60 calibration retests."""
    return (
        "--weight-quantizer",
        "gptq",
        "--sampler",
        "uniform",
        "--configs",
        "400",
        "--noise-samples",
        "60",
        "--seed",
        "0",
        "--test-limit",
        str(BENCH_TEST_IMAGES.get(name, ZOO_TEST_IMAGES[data])),
    )


def _data_file(name: str) -> Path:
    return Path(str(resources.files("emq.bench") / "data" / name))


BUNDLES: dict[str, Bundle] = {
    b.name: b
    for b in (
        Bundle(
            "default",
            file="default.sqlite",
            model="default",
            stats="default.stats.pt",
            summary="1,000 uniform random configurations (MQ-Bench-101 style), MSE-clipped rounding",
        ),
        Bundle(
            "stratified",
            file="stratified.sqlite",
            model="default",
            stats="default.stats.pt",
            summary="1,000 configurations spread evenly over model size, MSE-clipped rounding",
        ),
        Bundle(
            "vgg-digits",
            file="vgg-digits.sqlite",
            model="vgg-digits",
            stats="vgg-digits.stats.pt",
            summary="plain VGG-style CNN on the default task, GPTQ rounding",
        ),
        Bundle(
            "mobilenetv2-digits",
            file="mobilenetv2-digits.sqlite",
            model="mobilenetv2-digits",
            stats="mobilenetv2-digits.stats.pt",
            summary=(
                "MobileNetV2-style network (inverted residuals, depthwise convs) on the default task, GPTQ rounding"
            ),
        ),
        Bundle(
            "resnet20-fashion",
            file="resnet20-fashion.sqlite",
            model="resnet20-fashion",
            stats="resnet20-fashion.stats.pt",
            summary="ResNet-20 on Fashion-MNIST (real images), GPTQ rounding",
        ),
        *(
            Bundle(
                name,
                file=f"{name}.sqlite",
                model=name,
                stats=f"{name}.stats.pt",
                summary=summary,
                build=_zoo_recipe(name, data),
            )
            for name, data, summary in (
                ("resnet18-fashion", "fashion-mnist", "torchvision ResNet-18, MQ-Bench-101's 18 slots, GPTQ"),
                ("mobilenetv3-fashion", "fashion-mnist", "torchvision MobileNetV3-Small (SE, hard-swish), GPTQ"),
                ("shufflenetv2-fashion", "fashion-mnist", "torchvision ShuffleNetV2 x0.5 (channel shuffle), GPTQ"),
                ("regnet-digits", "default", "torchvision RegNetX (grouped convs) on digits, GPTQ"),
                ("squeezenet-shapes", "shapes-rgb", "torchvision SqueezeNet 1.1 (fire modules), RGB shapes, GPTQ"),
                ("efficientnet-shapes", "shapes-rgb", "torchvision EfficientNet-B0 (MBConv, SE), RGB shapes, GPTQ"),
                ("regnet-shapes", "shapes-rgb", "torchvision RegNetX (grouped convs) on RGB shapes, GPTQ"),
                ("densenet-shapes", "shapes-rgb", "torchvision DenseNet (concatenation) on RGB shapes, GPTQ"),
                ("vgg11bn-shapes", "shapes-rgb", "torchvision VGG-11-BN on RGB shapes, GPTQ"),
            )
        ),
    )
}


def build_hint(bundle: Bundle) -> str:
    """How to build a bundle's bench where it is missing."""
    if bundle.build:
        command = f"emq bench build --model {bundle.model} --out {bundle.file} {' '.join(bundle.build)}"
        return f"build it with `python scripts/build_zoo.py {bundle.name}` (in a checkout) or `{command}`"
    return "reinstall emq, or rebuild it with `emq bench build` (docs/zoo.md gives the command)"


def shipped_bench_path(name: str = "default") -> Path:
    """The bench file of a shipped bundle."""
    return BUNDLES[name].path


def resolve_bench_path(path: str | Path) -> Path:
    """A file path, or the name of a shipped bundle."""
    if str(path) in BUNDLES:
        p = shipped_bench_path(str(path))
        if not p.is_file():
            raise EmqError(f"the shipped bench {path!r} is not in this installation; {build_hint(BUNDLES[str(path)])}")
        return p
    return Path(path)


def stats_files(model: str) -> list[Path]:
    """The shipped statistics files of an embedded model (benches of one model may share one)."""
    paths = {b.stats_path for b in BUNDLES.values() if b.model == model and b.stats_path is not None}
    return sorted(p for p in paths if p.is_file())


def bundle_of(path: str | Path) -> Bundle | None:
    """The bundle whose bench file `path` is, else None."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    return next((b for b in BUNDLES.values() if b.path.resolve() == resolved), None)
