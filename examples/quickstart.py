"""Quickstart: train -> export -> verify -> table, on a tiny budget (about a minute on one core).

    python examples/quickstart.py                       # MNIST from ../shared/data beside the repo
    python examples/quickstart.py --data-dir DIR --n-train 5000 --epochs 2 --n 50

1. trains a small MLP on the first ``--n-train`` MNIST training images with PGD adversarial
   training and the ReLU-stability loss (Xiao et al. 2019) - what makes a net verifiable;
2. exports it to ONNX with robustkit's metadata;
3. verifies the first ``--n`` test images at ``--eps`` (attack, then CROWN, then the MILP),
   keeping per-sample records in ``OUT/results`` (resumable);
4. prints the multi-eps table; the eps of step 3 is read back from the record store.

Training needs the MNIST training set (the package embeds only a test subset): give
``--data-dir`` or set ``ROBUSTKIT_DATA``; by default ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ROBUSTKIT_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--extra-eps", type=float, default=0.02, help="a second eps for the table (0: none)")
    ap.add_argument("--n", type=int, default=10, help="test images to verify")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=0, help="0 = verify in this process")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from robustkit.onnx_export import export_onnx
    from robustkit.report.summary import format_rows
    from robustkit.report.tables import TableConfig, build_table, format_table
    from robustkit.training import TrainConfig, train
    from robustkit.verification import VerifyConfig
    from robustkit.verification.run import DatasetChoice, RunOptions, verify_dataset

    if not (args.data_dir / "mnist").is_dir() and not args.data_dir.name == "mnist":
        print(f"MNIST training data not found under {args.data_dir}; pass --data-dir DIR "
              "(a folder with mnist/*-ubyte.gz)", file=sys.stderr)
        return 1

    # 1. train (library API; the CLI equivalent is `robustkit train ...`)
    cfg = TrainConfig(dataset="mnist", net="mlp", hidden=(args.hidden, args.hidden), epochs=args.epochs,
                      batch_size=32, lr=((0.0, 3e-3),), eps=args.eps, eps_start=0.0, eps_ramp=(0.0, 1.0),
                      n_train=args.n_train, n_eval=200, regularizers=("pgd:steps=3", "relu-stability=0.001"),
                      data_dir=str(args.data_dir))
    run_dir = args.out / "run"
    if (run_dir / "model.pt").exists():
        print(f"[1] {run_dir} is already trained (delete it to train again)")
    else:
        result = train(cfg, run_dir, resume=(run_dir / "checkpoint.pt").exists(), quiet=True)
        print(f"[1] trained {run_dir} in {result.wall_time_s:.1f} s: test accuracy {100 * result.test_acc:.1f}% "
              f"(first {cfg.n_eval} test images)")

    # 2. export (CLI: `robustkit export RUN_DIR --out model.onnx`)
    model = export_onnx(run_dir, args.out / "quickstart.onnx")
    print(f"[2] exported {model} ({model.stat().st_size} bytes)")

    # 3. verify (CLI: `robustkit verify model.onnx --eps 0.05 --n 10`)
    vcfg = VerifyConfig(eps=args.eps, timeout=args.timeout)
    opts = RunOptions(results_root=args.out / "results", workers=args.workers, quiet=True)
    outcome = verify_dataset(model, vcfg, DatasetChoice("mnist", args.n, data_dir=args.data_dir), opts)
    print(f"[3] verified {len(outcome.records)} samples; records in {outcome.records_path}")
    print(format_rows([{"model": model.name, **outcome.summary}], "md", label_key="model"))

    # 4. table over eps (CLI: `robustkit table model.onnx --eps 0.05 --eps 0.02 --n 10`); the
    #    eps of step 3 is read from its store, only the new eps is verified.
    eps = (args.eps,) + ((args.extra_eps,) if args.extra_eps > 0 else ())
    rows = build_table(TableConfig(models=(model,), eps=eps, n=args.n, timeout=args.timeout,
                                   workers=args.workers, results_root=args.out / "results", data_dir=args.data_dir))
    print("[4] table")
    print(format_table(rows, "md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
