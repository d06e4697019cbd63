"""The one vocabulary of robustkit's options, declared once.

Every option that a command takes is an :class:`Option` here: its command-line flag, its place in
a run configuration file (``[section] key``), its kind, unit and default. A command lists the
options it takes in :data:`COMMANDS` (with the few per-command differences a :class:`Use` states:
a required eps, a longer list of choices). The typer commands, the TOML reader and writer, the
CLI reference and the tests all read this table, so a name, type, unit or default cannot differ
between two commands by accident.

Old spellings stay one release as hidden, deprecated aliases (:data:`FLAG_ALIASES`,
:data:`KEY_ALIASES`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from robustkit.milp.solvers import SOLVER_NAMES
from robustkit.report.tables import COLUMN_KEYS, DEFAULT_COLUMNS, TABLE_FORMATS
from robustkit.bounds.methods import BOUND_METHODS, INCOMPLETE, describe_methods
from robustkit.verification.config import BAB_INTERMEDIATE, BAB_SPLIT, FORMULATIONS, METHODS, TIGHTEN
from robustkit.verification.schedule import ORDERS

Kind = Literal["int", "number", "eps", "choice", "str", "path", "bool"]

#: TOML tables in the order the effective configuration is written; "" is the root table.
SECTIONS: dict[str, str] = {
    "": "what is run: inputs, radii, samples",
    "attack": "the PGD attack that runs first",
    "verify": "how a property is decided",
    "milp": "the MILP (method milp)",
    "bab": "branch and bound (method bab)",
    "train": "training",
    "run": "execution: processes, device, seed",
    "output": "where results go and how they are printed",
}


@dataclass(frozen=True)
class Option:
    """One setting. ``name`` is the Python parameter name and the key of the resolved settings;
    ``section``/``key`` its place in a TOML run configuration; ``flags`` its command-line
    spellings (the first is the long one). ``default_text`` replaces the default in help (for a
    default that depends on the input, e.g. the model's metadata). ``saved``: written into the
    effective configuration (False for actions such as ``--rerun`` that do not decide results).
    ``minimum``/``positive`` bound numbers; ``multiple``: repeatable flag / TOML list."""

    name: str
    section: str
    key: str
    flags: tuple[str, ...]
    kind: Kind
    default: Any
    help: str
    unit: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    positive: bool = False
    default_text: str | None = None
    saved: bool = True
    multiple: bool = False
    required: bool = False
    positional: bool = False
    noun: str = ""

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else self.name.upper()

    @property
    def where(self) -> str:
        """``[section] key`` as a config file spells it."""
        return f"[{self.section}] {self.key}" if self.section else self.key

    @property
    def what(self) -> str:
        return self.noun or self.key.replace("_", " ")


@dataclass(frozen=True)
class Use:
    """How one command uses an option: anything not None here replaces the option's field."""

    name: str
    default: Any = ...
    help: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    multiple: bool | None = None
    required: bool | None = None
    positional: bool | None = None
    default_text: str | None = None


def _o(name: str, section: str, flags: tuple[str, ...], kind: Kind, default: Any, help: str, **kw: Any) -> Option:
    key = kw.pop("key", name)
    return Option(name=name, section=section, key=key, flags=flags, kind=kind, default=default, help=help, **kw)


_BOUNDS_HELP = (f"Bound propagation: {describe_methods(TIGHTEN)} (each includes the ones before it); "
                "in verify, vnnlib, bench and table the bounds that decide stable ReLUs and start the complete method.")

#: Every option, declared once.
OPTIONS: dict[str, Option] = {o.name: o for o in [
    # -- what is run --------------------------------------------------------------------------------
    _o("model", "", (), "path", None, "ONNX model file.", positional=True, required=True),
    _o("models", "", (), "path", None, "ONNX model files (in a config file: files or glob patterns).",
       positional=True, multiple=True, required=True),
    _o("property", "", (), "path", None, "VNN-LIB property (it describes the violation).", positional=True,
       required=True),
    _o("benchmark", "", (), "path", None, "VNN-COMP benchmark folder with instances.csv "
       "(e.g. ../shared/benchmarks/vnncomp/mnist_fc_2022).", positional=True, required=True),
    _o("eps", "", ("--eps",), "eps", None, "L-inf radius in input units: a number or a fraction, e.g. 0.1 or 8/255.",
       unit="input units", required=True),
    _o("n", "", ("--n",), "int", 100, "Number of test images (the first N of the test set).", minimum=1),
    _o("start", "", ("--start",), "int", 0, "Index of the first test image (then N images from there).", minimum=0),
    _o("dataset", "", ("--dataset",), "str", None, "mnist, cifar10, an .npz file with x and y arrays (x_test, "
       "y_test: its test split), or a folder in the ImageFolder layout (<class>/<image>, or train/ and test/).",
       default_text="the model's metadata"),
    _o("inputs", "", ("--inputs",), "path", None, "An .npz file whose x and y arrays are the samples to evaluate "
       "(instead of the dataset's test split; the first N of them are used).", default_text="the dataset's test split"),
    _o("data_dir", "", ("--data-dir",), "path", None, "Dataset folder with mnist/ or cifar10/ (or the torchvision "
       "layouts).", default_text="$ROBUSTKIT_DATA, else the embedded test subset"),
    _o("filter", "", ("--filter",), "str", None, "Only instances whose 'onnx vnnlib' contains this text.",
       default_text="all"),
    _o("limit", "", ("--limit",), "int", None, "Only the first K (matching) instances.", minimum=1,
       default_text="all"),
    _o("name", "", ("--name",), "str", "table", "Name of the table: its files are <out>/<name>.md, "
       "<name>.config.toml, <name>.run.json."),
    # -- attack -------------------------------------------------------------------------------------
    _o("attack_steps", "attack", ("--attack-steps",), "int", 50, "PGD steps per restart (0: no attack).",
       key="steps", minimum=0, unit="steps"),
    _o("attack_restarts", "attack", ("--attack-restarts",), "int", 4, "PGD restarts; in verify, vnnlib, bench "
       "and table they cycle small steps, corner-to-corner steps and two leaky surrogate gradients.",
       key="restarts", minimum=1),
    _o("norm", "attack", ("--norm",), "choice", "linf", "Threat model: linf or l2.", choices=("linf", "l2")),
    _o("loss", "attack", ("--loss",), "choice", "ce", "Attack loss: ce (cross-entropy) or margin (CW).",
       choices=("ce", "margin")),
    # -- how a property is decided --------------------------------------------------------------
    _o("method", "verify", ("--method",), "choice", "bab", "Complete: bab (branch and bound) or milp; "
       f"incomplete (bounds alone, fast): {', '.join(INCOMPLETE)}.", choices=METHODS, noun="method"),
    _o("bounds", "verify", ("--bounds",), "choice", "crown", _BOUNDS_HELP, choices=TIGHTEN,
       noun="tightening (bound method)"),
    _o("timeout", "verify", ("--timeout",), "number", "60", "Time limit per sample (verify, table), per "
       "instance (vnnlib) or per instance and method (bench soundness).", unit="s", positive=True),
    _o("timeout_scale", "verify", ("--timeout-scale",), "number", "1", "Multiply every instance's published "
       "time limit by this.", positive=True),
    _o("formulation", "milp", ("--formulation",), "choice", "per-target", "per-target (one MILP per class) "
       "or max (one MILP).", choices=FORMULATIONS),
    _o("solver", "milp", ("--solver",), "choice", "highs", "MILP solver: highs (highspy), or through PuLP "
       "pulp-highs, cbc (bundled with PuLP), gurobi, cplex (own install and licence), scip (pip install "
       "pyscipopt).", choices=SOLVER_NAMES, noun="solver"),
    _o("write_milp", "milp", ("--write-milp",), "path", None, "Also write each MILP solved to this folder "
       "(.mps, .lp and a .json saying what each variable is).", default_text="not written"),
    _o("bab_intermediate", "bab", ("--bab-intermediate",), "choice", "auto", "The layers after a split, per "
       "child: recompute (CROWN), fixed (the parent's), or auto (recompute while it decides ReLUs).",
       key="intermediate", choices=BAB_INTERMEDIATE, noun="choice of intermediate bounds"),
    _o("bab_depth_weight", "bab", ("--bab-depth-weight",), "number", "3", "Branching weights a neuron's score "
       "by (1 + ReLU layers after it) to this power while recomputing decides ReLUs (0: the intercept score "
       "alone).", key="depth_weight", minimum=0),
    _o("bab_split", "bab", ("--bab-split",), "choice", "auto", "What a domain splits: relu, input (the input "
       "box), or auto (input for at most 10 input dimensions, else relu).", key="split", choices=BAB_SPLIT,
       noun="split"),
    _o("refine_stable", "verify", ("--refine-stable",), "bool", False, "CROWN bounds also for neurons that "
       "interval arithmetic proves stable (slower; tighter widths for them)."),
    _o("batch_size", "run", ("--batch-size",), "int", 32, "Samples bounded together.", minimum=1),
    _o("corner_pairs", "verify", ("--corner-pairs",), "int", 8, "Random opposite-corner pairs per sample "
       "(Hamming distance x+ vs x-).", minimum=1),
    _o("region_samples", "verify", ("--region-samples",), "int", 64, "Uniform points per box for counting "
       "distinct activation patterns.", minimum=1),
    # -- training -------------------------------------------------------------------------------------
    _o("net", "train", ("--net",), "str", "small", "mlp, small, large, maxpool (LeNet-like with MaxPool), "
       "resnet (2 residual blocks), or your own model: MODULE:FUNCTION or FILE.py:FUNCTION, a function returning "
       "an nn.Module (given input_shape and num_classes if it takes them).", noun="net"),
    _o("mean", "train", ("--mean",), "str", None, "Per-channel mean for input normalization inside the model, "
       "comma-separated (one value: every channel); with --std.", default_text="the dataset's"),
    _o("std", "train", ("--std",), "str", None, "Per-channel standard deviation for input normalization, "
       "comma-separated; with --mean.", default_text="the dataset's"),
    _o("hidden", "train", ("--hidden",), "str", None, "mlp hidden widths, e.g. 100,100.", default_text="none"),
    _o("epochs", "train", ("--epochs",), "int", 20, "Number of epochs.", minimum=1),
    _o("train_batch_size", "train", ("--batch-size",), "int", 50, "Training batch size.", key="batch_size",
       minimum=1),
    _o("optimizer", "train", ("--optimizer",), "choice", "adam", "adam or sgd.", choices=("adam", "sgd")),
    _o("lr", "train", ("--lr",), "str", "1e-3", "Learning rate: 1e-3, or EPOCH:LR knots of a piecewise-linear "
       "schedule, e.g. 0:1e-3,10:1e-4."),
    _o("momentum", "train", ("--momentum",), "number", "0.9", "SGD momentum.", minimum=0),
    _o("weight_decay", "train", ("--weight-decay",), "number", "0", "L2 weight decay of the optimizer; Jin & "
       "Rinard's Hamming term needs it (paper: 5e-4).", minimum=0),
    _o("train_eps", "train", ("--eps",), "eps", "0", "Training eps (L-inf), e.g. 0.1 or 8/255.", key="eps",
       unit="input units"),
    _o("eps_start", "train", ("--eps-start",), "eps", "0", "eps at the start of the ramp.", unit="input units"),
    _o("eps_ramp", "train", ("--eps-ramp",), "str", None, "Ramp eps over epochs START:END, e.g. 1:10.",
       default_text="no ramp"),
    _o("regularizer", "train", ("--regularizer", "-r"), "str", None, "Regularizer spec NAME[=WEIGHT][:KEY=VALUE...]"
       " (repeatable); `robustkit regularizers` lists them.", multiple=True, default_text="none"),
    _o("n_train", "train", ("--n-train",), "int", None, "Use only the first N training images.", minimum=1,
       default_text="all"),
    _o("n_eval", "train", ("--n-eval",), "int", 1000, "Test images evaluated after each epoch.", minimum=1),
    _o("resume", "train", ("--resume",), "bool", False, "Continue the run in --out from its checkpoint "
       "(options not given are taken from it).", saved=False),
    # -- execution ----------------------------------------------------------------------------------
    _o("workers", "run", ("--workers",), "int", 1, "Worker processes, each with a hard time limit (0: in this "
       "process, no hard limit).", minimum=0),
    _o("cores", "run", ("--cores",), "int", 1, "A network of at most 10 inputs decided by branch and bound: "
       "its input box searched in this many parts, one worker process each (the first sat ends the others).",
       minimum=1),
    _o("order", "run", ("--order",), "choice", "hardest-first", "With several workers: hardest-first (most "
       "unstable ReLUs first) or index.", choices=ORDERS),
    _o("cluster", "run", ("--cluster",), "str", None, "Dask: local:N starts a LocalCluster.",
       default_text="none"),
    _o("scheduler", "run", ("--scheduler",), "str", None, "Dask: address of an existing scheduler.",
       default_text="none"),
    _o("device", "run", ("--device",), "str", "cpu", "Torch device: cpu, cuda, cuda:0 or auto (cuda when "
       "available)."),
    _o("threads", "run", ("--threads",), "int", None, "CPU threads for torch (1 is fastest on a busy machine).",
       minimum=1, default_text="torch's choice"),
    _o("seed", "run", ("--seed",), "int", 0, "Seed of every random draw (initialisation, attack starts).",
       minimum=0),
    _o("rerun", "run", ("--rerun",), "choice", None, "Redo finished samples with this status (repeatable): "
       "timeout, unknown, error or all.", choices=("timeout", "unknown", "error", "all"), multiple=True,
       saved=False, default_text="none"),
    _o("quiet", "run", ("--quiet", "-q"), "bool", False, "No progress bar.", saved=False),
    _o("check", "run", ("--check",), "bool", False, "Only load and check the instance (sizes, operators); "
       "no solving.", saved=False),
    # -- output ---------------------------------------------------------------------------------------
    _o("out", "output", ("--out",), "path", None, "Folder of the results: records, run.json, the effective "
       "config.toml.", default_text="robustkit-results/<settings hash>"),
    _o("format", "output", ("--format",), "choice", "md", "How the table is printed: {choices}.",
       choices=TABLE_FORMATS, noun="format"),
    _o("columns", "output", ("--columns",), "str", ",".join(DEFAULT_COLUMNS), "Table columns, comma-separated; "
       "`robustkit table --columns all` shows every one. Available: " + ", ".join(COLUMN_KEYS) + "."),
    _o("plot", "output", ("--plot",), "path", None, "Also draw a figure (.png, .pdf or .svg).",
       default_text="none"),
    _o("table_file", "output", ("--table-file",), "path", None, "Also write the table to this file (it is "
       "always written to <out>/<name>.<format extension>).", default_text="none"),
    _o("result", "output", ("--result",), "path", None, "Write the VNN-COMP result file here.",
       default_text="<out>/result.txt with --out, else none"),
    _o("config", "", ("--config",), "path", None, "TOML run configuration holding any option of this command; "
       "options given on the command line override it.", saved=False, default_text="none"),
]}


def _u(name: str, **kw: Any) -> Use:
    return Use(name, **kw)


_DECIDE = ("method", "bounds", "timeout", "formulation", "solver", "write_milp", "bab_intermediate",
           "bab_depth_weight", "bab_split", "attack_steps", "attack_restarts", "seed")

#: The options of every command, in the order of its help.
COMMANDS: dict[str, tuple[Use, ...]] = {
    "train": (
        _u("out", required=True, help="Run folder (config, metrics, checkpoint, model, run.json, the effective "
           "config.toml)."),
        _u("dataset", default="mnist", default_text=None), _u("net"), _u("hidden"), _u("mean"), _u("std"),
        _u("epochs"),
        _u("train_batch_size"), _u("optimizer"), _u("lr"), _u("momentum"), _u("weight_decay"), _u("train_eps"),
        _u("eps_start"), _u("eps_ramp"), _u("regularizer"), _u("seed"), _u("n_train"), _u("n_eval"),
        _u("data_dir", default_text="$ROBUSTKIT_DATA"), _u("device"), _u("threads"), _u("resume"),
        _u("quiet", help="No progress bar or per-epoch lines."), _u("config"),
    ),
    "verify": (
        _u("model"), _u("eps"), _u("n"), _u("start"), _u("dataset"), _u("data_dir"), _u("inputs"),
        *(_u(n) for n in _DECIDE), _u("workers"), _u("order"), _u("cluster"), _u("scheduler"),
        _u("out"), _u("format", choices=("md", "csv", "json")), _u("rerun"), _u("quiet"), _u("config"),
    ),
    "vnnlib": (
        _u("model"), _u("property"), *(_u(n) for n in _DECIDE),
        _u("result"), _u("out", help="Folder of the results: result.txt, run.json, the effective config.toml.",
                         default_text="none"),
        _u("check"), _u("cores"), _u("config"),
    ),
    "bench vnncomp": (
        _u("benchmark"), _u("filter"), _u("limit"), _u("timeout_scale"),
        *(_u(n) for n in _DECIDE if n != "timeout"), _u("workers", minimum=1),
        _u("out", help="Run folder: records.jsonl, results/, summary.md, run.json, the effective config.toml.",
           default_text="robustkit-results/vnncomp/<benchmark>-<settings hash>"),
        _u("rerun"), _u("quiet"), _u("config"),
    ),
    "bench soundness": (
        _u("timeout", default="10"),
        _u("method", multiple=True, default=("crown", "alpha-crown", "milp", "bab", "bab-relu", "bab-input"),
           choices=("crown", "alpha-crown", "milp", "bab", "bab-relu", "bab-input"),
           help="Methods to run (repeatable): crown, alpha-crown, milp, bab (the default split), bab-relu, "
                "bab-input (branch and bound splitting only ReLUs, or only the input box)."),
        _u("out", help="Folder for the table (soundness.md) and run.json.", default_text="print only"),
    ),
    "table": (
        _u("models"), _u("eps", multiple=True, help="L-inf radius, repeatable: --eps 0.1 --eps 8/255."),
        _u("n"), _u("start"), _u("dataset", default_text="each model's metadata"), _u("data_dir"), _u("inputs"),
        *(_u(n) for n in _DECIDE if n != "write_milp"), _u("workers"), _u("order"),
        _u("out", help="Folder of the results: per-sample records (resumable), <name>.md, <name>.config.toml, "
                       "<name>.run.json.", default_text="robustkit-results"),
        _u("name"), _u("format"), _u("columns"), _u("table_file"), _u("plot"), _u("quiet"), _u("config"),
    ),
    "attack": (
        _u("model"), _u("eps"), _u("n"), _u("dataset"), _u("data_dir"), _u("inputs"), _u("attack_steps", minimum=1),
        _u("attack_restarts"), _u("norm"), _u("loss"), _u("device"), _u("seed"),
        _u("format", choices=("md", "json")),
    ),
    "bounds": (
        _u("model"), _u("eps"), _u("n"), _u("dataset"), _u("data_dir"), _u("inputs"),
        _u("bounds", choices=BOUND_METHODS, help=f"Bound method: {describe_methods(BOUND_METHODS)} "
           "(each includes the ones before it)."),
        _u("timeout", default=None, help="Time limit per batch for alpha-CROWN, LP and MILP.",
           default_text="no limit"),
        _u("batch_size"), _u("refine_stable"), _u("format", choices=("md", "json")),
    ),
    "stats": (
        _u("model"), _u("eps"), _u("n"), _u("dataset"), _u("data_dir"), _u("inputs"),
        _u("bounds", help="Bounds for the stability counts: interval, crown, alpha-crown or lp."),
        _u("corner_pairs"), _u("region_samples"), _u("attack_steps", minimum=1, help="PGD steps for the "
           "clean-vs-PGD Hamming distance."), _u("attack_restarts"), _u("seed"), _u("batch_size"), _u("plot"),
        _u("format", choices=("md", "json")),
    ),
}

#: Deprecated command-line spellings, per command: old flag -> option name. Hidden; they print a
#: deprecation warning and are removed in the release after this one.
FLAG_ALIASES: dict[str, dict[str, str]] = {
    "verify": {"--tighten": "bounds"},
    "vnnlib": {"--tighten": "bounds"},
    "bench vnncomp": {"--tighten": "bounds"},
    "table": {"--tighten": "bounds", "--results-root": "out"},
    "attack": {"--steps": "attack_steps", "--restarts": "attack_restarts"},
    "bounds": {"--method": "bounds", "--time-budget": "timeout"},
    "stats": {"--method": "bounds", "--pgd-steps": "attack_steps"},
}

#: Deprecated config-file spellings (the benchmark files of the release before):
#: (section, key) -> option name.
KEY_ALIASES: dict[tuple[str, str], str] = {
    ("", "timeout"): "timeout",
    ("", "workers"): "workers",
    ("", "results_root"): "out",
    ("verify", "tighten"): "bounds",
    ("verify", "attack_steps"): "attack_steps",
    ("verify", "attack_restarts"): "attack_restarts",
    ("output", "table"): "table_file",
}

#: Commands that read ``--config`` and write their effective configuration next to the results.
CONFIG_COMMANDS = ("train", "verify", "vnnlib", "bench vnncomp", "table")


def command_options(command: str) -> dict[str, Option]:
    """The options of ``command`` with its :class:`Use` applied, by name, in help order."""
    if command not in COMMANDS:
        raise KeyError(f"unknown command {command!r}")
    out: dict[str, Option] = {}
    for use in COMMANDS[command]:
        base = OPTIONS[use.name]
        changes = {f: getattr(use, f) for f in ("help", "choices", "minimum", "multiple", "required", "positional",
                                                 "default_text") if getattr(use, f) is not None}
        if use.default is not ...:
            changes["default"] = use.default
            changes.setdefault("default_text", None)  # the option's text described its own default
        out[use.name] = replace(base, **changes)
    return out


def option_by_key(command: str, section: str, key: str) -> Option | None:
    """The option of ``command`` stored at ``[section] key`` in a config file (aliases included)."""
    opts = command_options(command)
    for opt in opts.values():
        if opt.section == section and opt.key == key:
            return opt
    alias = KEY_ALIASES.get((section, key))
    return opts.get(alias) if alias else None


def commands_with_key(section: str, key: str) -> list[str]:
    """The commands that have an option at ``[section] key``."""
    return [c for c in COMMANDS if any(o.section == section and o.key == key for o in command_options(c).values())]
