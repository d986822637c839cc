"""Recipes: YAML files validated as a whole before anything heavy runs.

Every problem is reported at once with its key path ("optim.lr: must be > 0, got -1"); unknown
keys are rejected with a suggestion; method options are validated by the method's own schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtlcli.data.registry import DATASETS, DatasetSpec, resolve
from mtlcli.errors import DataError, MtlError, RecipeError
from mtlcli.methods.registry import REGISTRY, option_problems
from mtlcli.models.registry import ENCODERS, encoder_option_problems
from mtlcli.names import AUGMENT_CHOICES, LOSS_NAMES, METRIC_NAMES, TRACKER_NAMES
from mtlcli.plugins import import_path_problem, is_import_path
from mtlcli.schema import closest, describe_error, did_you_mean, non_string_keys, show, unknown_name

DATASET_NAMES = tuple(DATASETS)
ALL_TASKS = "all"  # `tasks: all` = every task of the dataset, with its default loss and metrics


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(Section):
    name: Literal[DATASET_NAMES]  # type: ignore[valid-type]
    dir: str | None = Field(None, description="prepared-data dir; null: --data-dir, $MTL_DATA_DIR or ./data")
    prepared: str | None = Field(None, description="a table's prepared name (`mtl prepare table --name`); null: table")
    size: int | None = Field(None, ge=1, description="expected image height (side); null: whatever was prepared")
    mean: float | list[float] | None = Field(None, description="per-channel input mean; null: the dataset's")
    std: float | list[float] | None = Field(None, description="per-channel input std; null: the dataset's")
    synthetic: bool = Field(False, description="random tensors of the recipe's shapes instead of prepared data")
    augment: Literal[AUGMENT_CHOICES] = Field(  # type: ignore[valid-type]
        "default", description="training augmentation on the device; default: what the dataset's references use"
    )
    placement: Literal["auto", "device", "stream"] = Field(
        "auto",
        description="device: the arrays on the training device (on the CPU: memory-mapped host memory); stream: "
        "batches read ahead from the memory-mapped files by a background thread and copied asynchronously; "
        "auto: device when the data takes at most half of a GPU's free memory, else stream",
    )

    @field_validator("std")
    @classmethod
    def _positive(cls, value: float | list[float] | None) -> float | list[float] | None:
        values = value if isinstance(value, list) else [value] if value is not None else []
        if any(v <= 0 for v in values):
            raise ValueError(f"must be > 0, got {value}")
        return value


class ModelConfig(BaseModel):
    """`encoder` (null: the dataset's default) plus that encoder's options (validated by its schema). A plug-in
    encoder is named by its import path, `package.module:factory`: its options are the factory's keyword
    arguments, checked against its signature when the model is built (the recipe imports no plug-in)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    encoder: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TaskConfig(Section):
    name: str
    loss: Literal[LOSS_NAMES] | None = Field(None, description="null: the dataset's loss for this task")  # type: ignore[valid-type]
    metrics: list[Literal[METRIC_NAMES]] | None = Field(None, min_length=1, description="null: the dataset's metrics")  # type: ignore[valid-type]
    loss_scale: float = Field(1.0, gt=0)


class MethodConfig(BaseModel):
    """`name` plus that method's options (validated against the method's schema)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SchedulerConfig(Section):
    name: Literal["step", "none"] = "step"
    step_size: int = Field(30, gt=0)
    gamma: float = Field(0.5, gt=0, le=1)


class OptimConfig(Section):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)


class TrainConfig(Section):
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(256, gt=0)
    eval_batch_size: int = Field(2048, gt=0)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    checkpoint_every: int = Field(1, gt=0, description="write last.pt every N epochs (and always at the end)")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss or gradient: stop (keep the last good checkpoint) or skip the step"
    )
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms(True)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast of the forward and the losses: fp32 (none), bf16, or fp16 with a loss scaler (CUDA)"
    )
    channels_last: bool = Field(False, description="channels-last memory layout for the wide convolutional encoders")
    compile: bool = Field(False, description="torch.compile the encoder and the heads (the method's step stays eager)")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")


class OutputConfig(Section):
    dir: str = "results"
    trackers: list[str] = Field(
        default_factory=list, description="experiment trackers that log each epoch too: tensorboard, mlflow (optional extras)"
    )

    @field_validator("trackers", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> Any:
        """A name alone stands for a list of one; each name is a known tracker, listed once."""
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"must be a list of trackers ({', '.join(TRACKER_NAMES)}), got {show(value)}")
        for name in value:
            if not isinstance(name, str) or name not in TRACKER_NAMES:
                raise ValueError(unknown_name("tracker", name, TRACKER_NAMES))
        if len(set(value)) != len(value):
            raise ValueError(f"a tracker is listed twice, got {show(value)}")
        return value


class Recipe(Section):
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    tasks: list[TaskConfig] = Field(min_length=1)
    method: MethodConfig
    optim: OptimConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _tasks_match_data(self) -> Recipe:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"tasks: names must be unique, {', '.join(duplicated)} appear(s) more than once")
        return self

    def resolve_defaults(self) -> Recipe:
        """Fill what the recipe left to defaults (the method's options; the dataset's encoder, its options, each
        task's loss and metrics), so that the saved recipe.yaml says everything the run used."""
        method_options = REGISTRY[self.method.name].options.model_validate(self.method.options).model_dump(mode="json")
        self.method = MethodConfig(name=self.method.name, **method_options)
        spec = dataset_spec(self.data.name, self.data.dir, self.data.prepared)
        if spec.from_table:
            self.data.prepared = self.data.prepared or spec.name
        encoder = self.model.encoder or spec.default_encoder
        if is_import_path(encoder):
            options = self.model.options  # a plug-in's keyword arguments, as given
        else:
            options = ENCODERS[encoder].options.model_validate(self.model.options).model_dump()
        self.model = ModelConfig(encoder=encoder, **options)
        for task in self.tasks:
            known = spec.task(task.name)
            if task.loss is None:
                task.loss = known.loss if known else "cross_entropy"
            if task.metrics is None:
                task.metrics = list(known.metrics) if known else ["accuracy"]
        return self

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the section that holds the key at `loc` (for did-you-mean suggestions)."""
    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


def _format_problem(loc: tuple[str | int, ...], message: str) -> str:
    path = ".".join(str(p) for p in loc) or "(top level)"
    if len(loc) == 2 and loc[0] == "tasks" and message.startswith("must be a mapping"):
        message = message.replace("must be a mapping", "must be a task name or a mapping (name, loss, metrics, loss_scale)", 1)
    return f"{path}: {message}"


def validate(raw: Any, *, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe, raising RecipeError with every problem found."""
    if not isinstance(raw, dict):
        kind = type(raw).__name__ if raw is not None else "nothing"
        raise RecipeError(source, [f"(top level): must be a mapping of sections (data, tasks, method, ...), got {kind}"])
    raw = _expand_tasks(raw)
    problems: list[str] = []
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(_format_problem(loc, f"unknown key{did_you_mean(str(loc[-1]), _fields_at(loc))}"))
            elif err["type"] == "value_error" and not loc:
                problems.append(str((err.get("ctx") or {}).get("error", err["msg"])))
            else:
                problems.append(_format_problem(loc, describe_error(err)))
    problems.extend(_method_problems(raw.get("method")))
    problems.extend(_task_problems(raw))
    problems.extend(_table_problems(raw))
    problems.extend(_data_problems(raw))
    problems.extend(_model_problems(raw))
    problems.extend(_input_problems(raw))
    problems.extend(_weights_problems(raw))
    problems.extend(_samples_problems(raw))
    problems.extend(_channels_last_problems(raw))
    problems.extend(_compile_problems(raw))
    if problems:
        raise RecipeError(source, problems)
    assert recipe is not None
    return recipe.resolve_defaults()


def dataset_spec(name: str, data_dir: str | None, prepared: str | None) -> DatasetSpec:
    """The registry entry of a dataset; a table's completed from its prepared meta.json (DataError if not prepared)."""
    return resolve(name, data_dir=data_dir, prepared=prepared)


def _data_keys(raw: dict[str, Any]) -> tuple[Any, Any, Any]:
    data = raw.get("data")
    return (data.get("name"), data.get("dir"), data.get("prepared")) if isinstance(data, dict) else (None, None, None)


def _dataset_of(raw: dict[str, Any]) -> Any:
    """The registry entry the recipe names, or None (a missing or unknown name, a table not prepared: reported elsewhere)."""
    name, data_dir, prepared = _data_keys(raw)
    if not isinstance(name, str) or name not in DATASETS:
        return None
    if not DATASETS[name].from_table:
        return DATASETS[name]
    if not (isinstance(data_dir, str | None) and isinstance(prepared, str | None)):
        return None
    try:
        return dataset_spec(name, data_dir, prepared)
    except DataError:
        return None


def _table_problems(raw: dict[str, Any]) -> list[str]:
    """A table must be prepared (its tasks are in its meta.json) and has no synthetic stand-in; only a table has
    a prepared name of its own."""
    name, data_dir, prepared = _data_keys(raw)
    if not isinstance(name, str) or name not in DATASETS:
        return []
    spec = DATASETS[name]
    if not spec.from_table:
        if prepared is not None and prepared != name:
            return [f"data.prepared: only a table is prepared under a name of its own; {name} is prepared as {name}"]
        return []
    data = raw["data"]
    if data.get("synthetic") is True:
        return ["data.synthetic: a table has no synthetic stand-in (its shapes are those of the prepared table)"]
    if not (isinstance(data_dir, str | None) and isinstance(prepared, str | None)):
        return []  # reported as a type problem
    if isinstance(prepared, str) and (not prepared or "/" in prepared or prepared.startswith(".")):
        return [f"data.prepared: {prepared!r} is not the name of a prepared table (a directory name in the data dir)"]
    try:
        spec = dataset_spec(name, data_dir, prepared)
    except DataError as exc:
        return [f"data.prepared: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")]
    problems = []
    if spec.features:
        problems += [f"data.{key}: a feature table is standardised when it is prepared; leave data.{key} out"
                     for key in ("mean", "std") if data.get(key) is not None]  # fmt: skip
    return problems


def _expand_tasks(raw: dict[str, Any]) -> dict[str, Any]:
    """`tasks: all` and a task given by its name alone (`tasks: [left, right]`) as the mappings they stand for."""
    tasks = raw.get("tasks")
    if isinstance(tasks, list):
        return {**raw, "tasks": [{"name": task} if isinstance(task, str) else task for task in tasks]}
    if tasks != ALL_TASKS:
        return raw
    spec = _dataset_of(raw)
    if spec is None:  # an unknown dataset or an unprepared table: its problem is reported, not `all` as a list
        return {**raw, "tasks": [{"name": ALL_TASKS}]}
    return {**raw, "tasks": [{"name": name} for name in spec.all_task_names]}


def _method_problems(method: Any) -> list[str]:
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        return []
    name = method["name"]
    if name not in REGISTRY:
        return [f"method.name: {unknown_name('method', name, REGISTRY)}"]
    options = {k: v for k, v in method.items() if k != "name"}
    not_names = non_string_keys("method", options)  # YAML allows `0: x` or `true: x` as keys
    if not_names:
        return not_names
    return [_format_problem(("method", *loc), msg) for loc, msg in option_problems(name, options)]


def _task_problems(raw: dict[str, Any]) -> list[str]:
    spec, tasks = _dataset_of(raw), raw.get("tasks")
    if spec is None or not isinstance(tasks, list):
        return []
    problems = []
    for i, task in enumerate(tasks):
        known = spec.task(task["name"]) if isinstance(task, dict) and isinstance(task.get("name"), str) else None
        loss = task.get("loss") if isinstance(task, dict) else None
        if known is not None and known.losses and isinstance(loss, str) and loss in LOSS_NAMES and loss not in known.losses:
            problems.append(f"tasks.{i}.loss: task {known.name} of {spec.name} takes {' or '.join(known.losses)} "
                            f"(its labels may be missing), not {loss}")  # fmt: skip
        if isinstance(task, dict) and isinstance(task.get("name"), str) and spec.task(task["name"]) is None:
            close = closest(task["name"], spec.task_names)
            hint = f"did you mean {close!r}? " if close else ""
            shown = (
                ", ".join(spec.task_names)
                if len(spec.task_names) <= 12
                else f"{len(spec.task_names)} tasks, see `mtl prepare --help`"
            )
            problems.append(f"tasks.{i}.name: {task['name']!r} is not a task of {spec.name} ({hint}its tasks: {shown})")
    return problems


def _data_problems(raw: dict[str, Any]) -> list[str]:
    """Image side within the dataset's range; mean/std with one value or one per channel."""
    spec = _dataset_of(raw)
    if spec is None:
        return []
    data = raw["data"]
    problems = []
    size = data.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and not spec.min_size <= size <= spec.max_size:
        problems.append(f"data.size: {spec.name} images are {spec.min_size}..{spec.max_size} pixels {spec.side_word}, got {size}")
    if spec.graph and data.get("augment") not in (None, "none", "default"):
        problems.append(f"data.augment: {spec.name} holds molecular graphs, which take no image augmentation; leave it out")
    for key in ("mean", "std"):
        value = data.get(key)
        if isinstance(value, list) and len(value) not in (1, spec.channels):
            problems.append(
                f"data.{key}: {spec.name} has {spec.channels} channel(s): give 1 or {spec.channels} values, got {len(value)}"
            )
    return problems


def _model_problems(raw: dict[str, Any]) -> list[str]:
    """The encoder is registered and its options fit its schema."""
    model = raw.get("model")
    if model is None:
        return []
    if not isinstance(model, dict):
        return [f"model: must be a mapping, got {show(model)}"]
    spec = _dataset_of(raw)
    encoder = model.get("encoder") if model.get("encoder") is not None else spec.default_encoder if spec else None
    if encoder is None:
        return []
    if is_import_path(encoder):
        problem = import_path_problem(encoder)
        return [] if problem is None else [f"model.encoder: {problem}"]
    if not isinstance(encoder, str) or encoder not in ENCODERS:
        plug_in = "; or a plug-in's import path, package.module:factory"
        return [f"model.encoder: {unknown_name('encoder', encoder, ENCODERS)}{plug_in}"]
    if spec is not None and spec.graph != ENCODERS[encoder].graph:
        takes, holds = ("molecular graphs", "images") if ENCODERS[encoder].graph else ("images", "molecular graphs")
        fitting = [name for name, e in ENCODERS.items() if e.graph == spec.graph]
        return [f"model.encoder: {encoder} takes {takes}, {spec.name} holds {holds} (choose {' or '.join(fitting)})"]
    options = {k: v for k, v in model.items() if k != "encoder"}
    not_names = non_string_keys("model", options)
    if not_names:
        return not_names
    return [_format_problem(("model", *loc), msg) for loc, msg in encoder_option_problems(encoder, options)]


def _input_problems(raw: dict[str, Any]) -> list[str]:
    """data.size fits the encoder (e.g. resnet18-cifar needs a multiple of 32); known before any data is read."""
    spec, data, model = _dataset_of(raw), raw.get("data"), raw.get("model")
    size = data.get("size") if isinstance(data, dict) else None
    if spec is None or not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return []
    encoder = model.get("encoder") if isinstance(model, dict) and model.get("encoder") is not None else spec.default_encoder
    if not isinstance(encoder, str) or encoder not in ENCODERS:
        return []
    width = spec.width_of(size)
    if width is None:
        ratio = f"{spec.aspect[0]}:{spec.aspect[1]}"
        return [f"data.size: {spec.name} images are {ratio} (width:height), so the height must be a multiple of {spec.aspect[1]}"]
    problem = ENCODERS[encoder].input_problem((spec.channels, size, width))
    return [f"data.size: {problem}"] if problem else []


def _weights_problems(raw: dict[str, Any]) -> list[str]:
    """`static` takes one weight per task: a mismatch is a recipe problem, reported with the others."""
    method, tasks = raw.get("method"), raw.get("tasks")
    if not (isinstance(method, dict) and method.get("name") == "static" and isinstance(tasks, list)):
        return []
    weights = method.get("weights")
    if isinstance(weights, list) and len(weights) != len(tasks):
        return [f"method.weights: {len(weights)} weights for {len(tasks)} tasks (one per task, in the order of tasks)"]
    return []


def _samples_problems(raw: dict[str, Any]) -> list[str]:
    """A method that splits each batch into k samples (modo, sdmgrad) needs batches of k examples or more."""
    method, train = raw.get("method"), raw.get("train")
    name = method.get("name") if isinstance(method, dict) else None
    info = REGISTRY.get(name) if isinstance(name, str) else None
    size = train.get("batch_size", TrainConfig.model_fields["batch_size"].default) if isinstance(train, dict) else None
    if info is None or info.samples < 2 or not isinstance(size, int) or size >= info.samples:
        return []
    k = info.samples
    return [f"train.batch_size: {name} splits each batch into {k} samples, so it needs {k} or more, got {size}"]


def _channels_last_problems(raw: dict[str, Any]) -> list[str]:
    """`train.channels_last` is for the encoders of wide convolutions (the registry's `channels_last`); a plug-in
    encoder is the user's to judge."""
    train, model = raw.get("train"), raw.get("model")
    spec = _dataset_of(raw)
    if not (isinstance(train, dict) and train.get("channels_last") is True) or spec is None:
        return []
    encoder = model.get("encoder") if isinstance(model, dict) and model.get("encoder") is not None else spec.default_encoder
    if not isinstance(encoder, str) or encoder not in ENCODERS or ENCODERS[encoder].channels_last:
        return []
    wide = ", ".join(name for name, e in ENCODERS.items() if e.channels_last)
    return [f"train.channels_last: encoder {encoder} has no wide convolutions for the channels-last layout to speed up "
            f"(it applies to {wide}); leave it off"]  # fmt: skip


def _compile_problems(raw: dict[str, Any]) -> list[str]:
    """`grads: batched` is one vmapped backward, which has no batching rule through compiled backwards."""
    train, method = raw.get("train"), raw.get("method")
    if isinstance(train, dict) and train.get("compile") is True and isinstance(method, dict) and method.get("grads") == "batched":
        return ["method.grads: batched (one vmapped backward) cannot run through the compiled model of train.compile; "
                "use grads: loop, or train.compile: false"]  # fmt: skip
    return []


def parse_yaml(text: str, *, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise MtlError(f"{where}: broken YAML: {exc.problem or exc}", hint="fix the YAML syntax") from None
    except yaml.YAMLError as exc:
        raise MtlError(f"{source}: broken YAML: {exc}") from None


def read_recipe_file(path: Path) -> Any:
    path = Path(path)
    if path.is_dir():
        raise MtlError(f"{path} is a directory, not a recipe", hint="pass a YAML file such as recipes/multifashion.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MtlError(f"recipe {path} does not exist", hint="see recipes/ for the shipped recipes") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MtlError(f"cannot read recipe {path}: {exc}") from None
    return parse_yaml(text, source=str(path))


def parse_set(assignment: str) -> tuple[list[str], Any]:
    """`key.path=value` -> (['key', 'path'], value parsed as YAML)."""
    if "=" not in assignment:
        raise MtlError(f"--set {assignment!r}: expected key.path=value", hint="e.g. --set optim.lr=0.01")
    key, _, value = assignment.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise MtlError(f"--set {assignment!r}: empty key in {key!r}")
    return parts, parse_yaml(value, source=f"--set {key}")


def set_path(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part)
        if nxt is None:
            nxt = {}
            _assign(node, part, nxt, parts[: i + 1])
        node = nxt
    _assign(node, parts[-1], value, parts)


def _child(node: Any, part: str) -> Any:
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    if isinstance(node, dict):
        return node.get(part)
    return None


def _assign(node: Any, part: str, value: Any, path: list[str]) -> None:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise MtlError(f"--set {'.'.join(path)}: {part!r} is not an index of that list (0..{len(node) - 1})")
        node[int(part)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise MtlError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} is not a mapping")


def load(
    path: Path | None = None,
    *,
    raw: dict[str, Any] | None = None,
    method: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    out: str | None = None,
    data_dir: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> Recipe:
    """Read a recipe, apply CLI overrides and `--set key.path=value` assignments, validate it all."""
    if raw is None:
        if path is None:
            raise MtlError("no recipe given", hint="pass a recipe, e.g. recipes/multifashion.yaml")
        raw = read_recipe_file(path)
    source = str(path) if path is not None else "recipe"
    if not isinstance(raw, dict):
        return validate(raw, source=source)
    if method is not None:
        current = raw.get("method")
        if not (isinstance(current, dict) and current.get("name") == method):
            raw["method"] = {"name": method}  # options of another method do not carry over
    for key, value in (("epochs", epochs), ("seed", seed), ("device", device)):
        if value is not None:
            set_path(raw, ["train", key], value)
    if out is not None:
        set_path(raw, ["output", "dir"], out)
    if data_dir is not None:
        set_path(raw, ["data", "dir"], data_dir)
    for assignment in sets:
        set_path(raw, *parse_set(assignment))
    return validate(raw, source=source)
