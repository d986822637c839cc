"""The dataset registry: one entry per dataset, the only place that knows a dataset by name.

A `DatasetSpec` says what a dataset's prepared arrays look like (channels, image side, tasks with
their default loss and metrics), its default input normalisation and encoder, and how `mtl prepare`
builds it. The recipe, the trainer, the synthetic stand-in and the reports ask this registry; they
never name a dataset. Adding a dataset = one module under `mtlcli.data` + one entry here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlcli.data import paired
from mtlcli.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """A task a dataset offers: its label column's number of classes and the default loss and metrics."""

    name: str
    num_classes: int  # the head's outputs: classes, or channels of a regression map
    loss: str = "cross_entropy"
    metrics: tuple[str, ...] = ("accuracy",)
    target: str | None = None  # the target array it reads; None: a column of the class-label array
    losses: tuple[str, ...] = ()  # the losses its targets allow (e.g. the masked ones where labels may be missing); (): any


@dataclass(frozen=True)
class PrepareRequest:
    """What `mtl prepare` was asked for; each dataset reads the fields that apply to it."""

    data_dir: Path
    sources: list[str] = field(default_factory=list)
    size: int | None = None
    seed: int = 0
    force: bool = False
    mirror: str | None = None
    workers: int | None = None
    console: Console | None = None
    table: TableRequest | None = None  # `mtl prepare table`'s own options


@dataclass(frozen=True)
class TableRequest:
    """What `mtl prepare table` reads: the table, its images (None: its numeric columns are the input), the
    prepared name, the id column, the task columns (None: every column but the id and split ones) and the split column."""

    labels: Path
    images: Path | None = None
    name: str = "table"
    id_column: str = "id"
    tasks: tuple[str, ...] | None = None
    split_column: str = "split"


@dataclass(frozen=True)
class Prepared:
    """The outcome of a prepare: where the dataset is, whether it was built now, and its meta.json."""

    path: Path
    built: bool
    meta: dict[str, Any]


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry. Prepared arrays: uint8 images [N, H, W] (channels == 1) or [N, H, W, C], and
    labels [N, len(tasks)] in the order of `tasks`."""

    name: str
    description: str
    tasks: tuple[TaskSpec, ...]
    channels: int
    default_size: int
    min_size: int
    max_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_encoder: str
    how_to_get: str
    aliases: tuple[str, ...] = ()
    uses_seed: bool = True  # whether `--seed` changes what prepare builds (pairing, validation split)
    aspect: tuple[int, int] = (1, 1)  # width : height; `size` is the height
    target_kinds: dict[str, str] = field(default_factory=dict)  # target array -> kind (store.TARGET_KINDS)
    default_tasks: tuple[str, ...] | None = None  # what `tasks: all` means when not every task (alternatives)
    augment: str = "none"  # the training augmentation its references use (`data.augment: default`)
    from_table: bool = False  # the user's own table: its tasks and input are read from the prepared meta.json (`resolve`)
    features: bool = False  # a prepared table whose input is its numeric columns (float32 [N, 1, 1, F]), not images
    graph: bool = False  # molecules as graphs (store.GRAPH_ARRAYS), not images: `channels` are the node features
    multi_input: bool = False  # each task has its own images: a row is labelled for one task (mtlcli.training.multi_input)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def all_task_names(self) -> list[str]:
        """The tasks `tasks: all` selects."""
        return list(self.default_tasks) if self.default_tasks else self.task_names

    @property
    def side_word(self) -> str:
        """What `size` measures: "a side" of square images, else "high"."""
        return "a side" if self.aspect == (1, 1) else "high"

    def width_of(self, size: int) -> int | None:
        """The image width at height `size`, or None when the aspect ratio makes it fractional."""
        width, height = self.aspect
        return size * width // height if size * width % height == 0 else None

    def meta_schema(self) -> dict[str, Any]:
        """meta.json's `tasks` (and `targets`, for datasets with target arrays): what `load_prepared` reads back."""
        tasks = [{"name": t.name, "num_classes": t.num_classes, **({"target": t.target} if t.target else {})} for t in self.tasks]
        if not self.target_kinds:
            return {"tasks": tasks}
        return {"tasks": tasks, "targets": {name: {"kind": kind} for name, kind in self.target_kinds.items()}}

    def task(self, name: str) -> TaskSpec | None:
        return next((t for t in self.tasks if t.name == name), None)


# ----------------------------------------------------------------------------- MNIST family
def _paired(name: str, aliases: tuple[str, ...] = ()) -> DatasetSpec:
    overlay = paired.SPECS[name]
    raw = " and ".join(dict.fromkeys({"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[s] for s in overlay.sources))
    return DatasetSpec(
        name=name,
        description=overlay.description,
        tasks=tuple(TaskSpec(task, 10) for task in paired.TASKS),
        channels=1,
        default_size=28,
        min_size=16,
        max_size=paired.CANVAS,
        mean=(0.1307,),
        std=(0.3081,),
        default_encoder="multilenet",
        how_to_get=f"downloaded by `mtl prepare {name}` ({raw} IDX files; or --source DIR with the raw files)",
        aliases=aliases,
    )


# ----------------------------------------------------------------------------- CelebA
def one_source(spec: DatasetSpec, request: PrepareRequest) -> Path | None:
    """`--source DIR` (or None) for a dataset read from one release directory that no script can download."""
    if request.mirror is not None:
        raise DataError(f"--mirror: {spec.name} cannot be downloaded by a script", hint="pass the release with --source DIR")
    if len(request.sources) > 1:
        raise DataError(f"--source: {spec.name} is read from one directory", hint="pass --source DIR once")
    return Path(request.sources[0]) if request.sources else None


CELEBA = DatasetSpec(
    name="celeba",
    description="CelebA aligned faces, 40 binary attributes (Liu et al. 2015; Sener & Koltun 2018)",
    tasks=tuple(TaskSpec(a, 2, "cross_entropy", ("error",)) for a in CELEBA_ATTRIBUTES),
    channels=3,
    default_size=64,
    min_size=32,
    max_size=256,
    # fallback only: `mtl prepare celeba` measures the training split's mean/std into meta.json
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    default_encoder="resnet18-cifar",
    how_to_get=(
        "the official release (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html: img_align_celeba, "
        "list_attr_celeba.txt, list_eval_partition.txt), then `mtl prepare celeba --source DIR`"
    ),
    uses_seed=False,
)

# ----------------------------------------------------------------------------- dense scene understanding
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_CATEGORIES: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
NYUV2_CLASSES = 13
SEGMENTATION_METRICS = ("miou", "pixel_accuracy")
NORMAL_METRICS = ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


CITYSCAPES = DatasetSpec(
    name="cityscapes",
    description="Cityscapes fine annotations: 19-class segmentation, instance offsets, disparity (Sener & Koltun 2018)",
    tasks=(
        TaskSpec("semantic", len(CITYSCAPES_CLASSES), "pixel_cross_entropy", SEGMENTATION_METRICS, target="semantic"),
        TaskSpec("category", len(CITYSCAPES_CATEGORIES), "pixel_cross_entropy", SEGMENTATION_METRICS, target="category"),
        TaskSpec("instance", 2, "masked_l1", ("abs_error",), target="instance"),
        TaskSpec("disparity", 1, "masked_l1", ("abs_error", "rel_error"), target="disparity"),
    ),
    channels=3,
    default_size=256,
    min_size=16,
    max_size=1024,
    # fallback only: prepare measures the training split's mean/std into meta.json
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    default_encoder="resnet50-dilated",
    how_to_get=(
        "the official release (https://www.cityscapes-dataset.com/downloads/, free registration: "
        "leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip, disparity_trainvaltest.zip), "
        "then `mtl prepare cityscapes --source DIR`"
    ),
    aspect=(2, 1),
    target_kinds={"semantic": "segmentation", "category": "segmentation", "instance": "offset", "disparity": "disparity"},
    default_tasks=("semantic", "instance", "disparity"),
)

CITYSCAPES_MTAN = DatasetSpec(
    name="cityscapes-mtan",
    description=(
        "Cityscapes as MTAN preprocessed it (128x256 .npy): 7-class segmentation, inverse depth; 19 classes optional "
        "(Liu et al. 2019; Nash-MTL, FAMO)"
    ),
    tasks=(
        TaskSpec("segmentation", len(CITYSCAPES_CATEGORIES), "pixel_cross_entropy", SEGMENTATION_METRICS, target="segmentation"),
        TaskSpec("depth", 1, "masked_l1", ("abs_error", "rel_error"), target="depth"),
        TaskSpec("segmentation_19", len(CITYSCAPES_CLASSES), "pixel_cross_entropy", SEGMENTATION_METRICS, "segmentation_19"),
    ),
    channels=3,
    default_size=128,
    min_size=32,
    max_size=256,  # MTAN also released a 256x512 version in the same layout
    # the references feed images in [0, 1] without normalisation
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    default_encoder="segnet-split",
    how_to_get=(
        "the preprocessed Cityscapes of MTAN (https://github.com/lorenmt/mtan: the 128x256 version, 2,975 train / "
        "500 val samples as .npy), then `mtl prepare cityscapes-mtan --source DIR`"
    ),
    aspect=(2, 1),
    target_kinds={"segmentation": "segmentation", "depth": "depth", "segmentation_19": "segmentation"},
    default_tasks=("segmentation", "depth"),
    augment="scale-crop-flip",
)

NYUV2 = DatasetSpec(
    name="nyuv2",
    description="NYUv2 (MTAN preprocessing): 13-class segmentation, depth, surface normals (Liu et al. 2019)",
    tasks=(
        TaskSpec("segmentation", NYUV2_CLASSES, "pixel_cross_entropy", SEGMENTATION_METRICS, target="segmentation"),
        TaskSpec("depth", 1, "masked_l1", ("abs_error", "rel_error"), target="depth"),
        TaskSpec("normal", 3, "normal_cosine", NORMAL_METRICS, target="normal"),
    ),
    channels=3,
    default_size=288,
    min_size=48,
    max_size=288,
    # the references feed images in [0, 1] without normalisation
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    default_encoder="segnet-split",
    how_to_get=(
        "the preprocessed NYUv2 of MTAN (https://github.com/lorenmt/mtan: nyuv2.zip, 795 train / 654 val "
        "images at 288x384 as .npy), then `mtl prepare nyuv2 --source DIR`"
    ),
    aspect=(4, 3),
    target_kinds={"segmentation": "segmentation", "depth": "depth", "normal": "normal"},
    augment="scale-crop-flip",
)

# ----------------------------------------------------------------------------- molecules
@dataclass(frozen=True)
class QM9Target:
    """A QM9 task: its gdb9.sdf.csv column and the unit Nash-MTL's and FAMO's tables print its MAE in."""

    name: str
    column: str
    unit: str
    description: str


# Nash-MTL / FAMO (experiments/quantum_chemistry/utils.py): PyG's targets [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11], the
# energies in meV (`multiply_indx`); U0, U, H and G are the atomization energies (PyG's 12-15).
QM9_TARGETS: tuple[QM9Target, ...] = (
    QM9Target("mu", "mu", "D", "dipole moment"),
    QM9Target("alpha", "alpha", "a0^3", "isotropic polarizability"),
    QM9Target("homo", "homo", "meV", "HOMO energy"),
    QM9Target("lumo", "lumo", "meV", "LUMO energy"),
    QM9Target("r2", "r2", "a0^2", "electronic spatial extent"),
    QM9Target("zpve", "zpve", "meV", "zero point vibrational energy"),
    QM9Target("u0", "u0_atom", "meV", "atomization energy at 0 K"),
    QM9Target("u", "u298_atom", "meV", "atomization energy at 298.15 K"),
    QM9Target("h", "h298_atom", "meV", "atomization enthalpy at 298.15 K"),
    QM9Target("g", "g298_atom", "meV", "atomization free energy at 298.15 K"),
    QM9Target("cv", "cv", "cal/mol K", "heat capacity at 298.15 K"),
)
QM9_NODE_FEATURES = 11

QM9_TASKS = tuple(
    TaskSpec(t.name, 1, "masked_mse", ("abs_error",), target=t.name, losses=("masked_mse", "masked_l1")) for t in QM9_TARGETS
)

QM9 = DatasetSpec(
    name="qm9",
    description="QM9 molecules as graphs: 11 regression targets, MAE in the units of Nash-MTL's and FAMO's tables",
    tasks=QM9_TASKS,
    channels=QM9_NODE_FEATURES,
    default_size=1,
    min_size=1,
    max_size=1,
    mean=(0.0,) * QM9_NODE_FEATURES,  # node features are taken as they are
    std=(1.0,) * QM9_NODE_FEATURES,
    default_encoder="mpnn",
    how_to_get=(
        "the raw files PyTorch Geometric's QM9 reads (https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/"
        "molnet_publish/qm9.zip: gdb9.sdf, gdb9.sdf.csv; https://ndownloader.figshare.com/files/3195404 saved as "
        "uncharacterized.txt) in one directory, then `mtl prepare qm9 --source DIR`"
    ),
    target_kinds={t.name: "value" for t in QM9_TARGETS},
    graph=True,
)

# ----------------------------------------------------------------------------- multi-input: a task per domain
MASKED_CE = "masked_cross_entropy"  # a row's other tasks are MISSING_LABEL: each task's loss sees its own rows


def _office(name: str, description: str, domains: tuple[str, ...], classes: int, layout: str, url: str) -> DatasetSpec:
    """Office-31 / Office-Home as LibMTL trains them (examples/office): each domain a task with its own images,
    `classes`-way classification, ImageNet-normalised 224x224 inputs, a pretrained ResNet-18 and a linear head each."""
    return DatasetSpec(
        name=name,
        description=description,
        tasks=tuple(TaskSpec(d, classes, MASKED_CE, ("accuracy",), losses=(MASKED_CE,)) for d in domains),
        channels=3,
        default_size=224,
        min_size=16,
        max_size=512,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_encoder="resnet18",
        how_to_get=f"the official release ({url}: {layout}), then `mtl prepare {name} --source DIR`",
        multi_input=True,
    )


OFFICE_31 = _office(
    "office-31",
    "Office-31: 31 classes in 3 domains (amazon, dslr, webcam), a task each with its own images (multi-input; LibMTL)",
    ("amazon", "dslr", "webcam"),
    31,
    "amazon/images/<class>/*.jpg, dslr/images/..., webcam/images/...",
    "https://faculty.cc.gatech.edu/~judy/domainadapt/",
)
OFFICE_HOME = _office(
    "office-home",
    "Office-Home: 65 classes in 4 domains (Art, Clipart, Product, Real_World), a task each (multi-input; LibMTL)",
    ("art", "clipart", "product", "real_world"),
    65,
    "Art/<class>/*.jpg, Clipart/..., Product/..., Real_World/...",
    "https://www.hemanthdv.org/officeHomeDataset.html",
)

# ----------------------------------------------------------------------------- the user's own table
TABLE_IMAGE_ENCODER = "resnet18-cifar"
TABLE_FEATURE_ENCODER = "mlp"
CLASSIFICATION_LOSSES = ("masked_cross_entropy",)
REGRESSION_LOSSES = ("masked_mse", "masked_l1")

TABLE = DatasetSpec(
    name="table",
    description="your own table (CSV or parquet): a task per column, images or numeric features as input",
    tasks=(),  # read from the prepared meta.json: see `resolve`
    channels=3,
    default_size=64,
    min_size=16,
    max_size=512,
    mean=(0.5, 0.5, 0.5),  # fallback only: prepare measures the training split's mean/std into meta.json
    std=(0.5, 0.5, 0.5),
    default_encoder=TABLE_IMAGE_ENCODER,
    how_to_get="`mtl prepare table --labels FILE.csv|FILE.parquet [--images DIR] [--name NAME]`",
    from_table=True,
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _paired("multimnist", ("multi-mnist",)),
        _paired("multifashion", ("multi-fashion",)),
        _paired("multi-fashion-mnist"),
        CELEBA,
        CITYSCAPES,
        CITYSCAPES_MTAN,
        NYUV2,
        QM9,
        OFFICE_31,
        OFFICE_HOME,
        TABLE,
    )
}


def canonical_name(name: str) -> str:
    """A registered dataset name (or alias, any case) -> its registry name; DataError otherwise."""
    key = name.lower()
    for spec in DATASETS.values():
        if key == spec.name or key in spec.aliases:
            return spec.name
    from mtlcli.schema import closest  # on the error path only: completion stays free of pydantic

    close = closest(key, DATASETS)
    hint = f"did you mean {close!r}? " if close else ""
    raise DataError(f"unknown dataset {name!r}", hint=f"{hint}choose one of: {', '.join(DATASETS)}")


def get(name: str) -> DatasetSpec:
    return DATASETS[canonical_name(name)]


# ----------------------------------------------------------------------------- datasets described by their prepared data
def resolve_data_dir(data_dir: Path | str | None) -> Path:
    """`--data-dir` (or the recipe's data.dir), else `$MTL_DATA_DIR`, else `./data`."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("MTL_DATA_DIR")
    return Path(env) if env else Path("data")


def prepare_table_hint(prepared: str) -> str:
    name = "" if prepared == TABLE.name else f" --name {prepared}"
    return f"run `mtl prepare table --labels FILE.csv [--images DIR]{name}` first"


def table_task(entry: dict[str, Any]) -> TaskSpec:
    """A task of a prepared table (its meta.json entry): classification or regression, with their masked losses."""
    if entry.get("kind") == "regression":
        return TaskSpec(entry["name"], 1, REGRESSION_LOSSES[0], ("abs_error", "rmse"), entry["target"], REGRESSION_LOSSES)
    return TaskSpec(entry["name"], int(entry["num_classes"]), CLASSIFICATION_LOSSES[0], ("accuracy",), entry["target"],
                    CLASSIFICATION_LOSSES)  # fmt: skip


def resolve(name: str, *, data_dir: Path | str | None = None, prepared: str | None = None) -> DatasetSpec:
    """The registry entry of dataset `name`; for a table, the entry completed from DATA_DIR/<prepared>/meta.json
    (its tasks, channels, image size and default encoder). DataError when that table is not prepared."""
    spec = get(name)
    if not spec.from_table:
        return spec
    prepared = prepared or spec.name
    root = resolve_data_dir(data_dir)
    path = root / prepared / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"table dataset {prepared!r} is not prepared in {root}/", hint=prepare_table_hint(prepared)) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint=f"{prepare_table_hint(prepared)}, with --force") from None
    return table_spec(spec, meta, prepared, where=path)


def table_spec(spec: DatasetSpec, meta: Any, prepared: str, *, where: Path | str = "meta.json") -> DatasetSpec:
    """The table entry `spec` completed from a prepared table's meta.json (`where`, for the error)."""
    hint = f"{prepare_table_hint(prepared)}, with --force"
    try:
        if meta.get("dataset") != spec.name:
            raise DataError(f"{where}: data.prepared {prepared!r} holds dataset {meta.get('dataset')!r}, not a table",
                            hint="name the prepared table in data.prepared")  # fmt: skip
        tasks = tuple(table_task(entry) for entry in meta["tasks"])
        features = meta["input"] == "features"
        size, channels = int(meta["size"]), int(meta["channels"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(f"{where} is not the meta.json of a prepared table", hint=hint) from None
    return replace(
        spec,
        description=f"{spec.description}: {prepared}",
        tasks=tasks,
        channels=channels,
        default_size=size,
        min_size=size,
        max_size=size,
        mean=tuple(meta.get("mean") or (0.0,) * channels),
        std=tuple(meta.get("std") or (1.0,) * channels),
        default_encoder=TABLE_FEATURE_ENCODER if features else TABLE_IMAGE_ENCODER,
        features=features,
    )
