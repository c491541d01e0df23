"""``ssmcompress`` command line: train, evaluate, info, compress, experiment, data, demo.

Every user mistake (bad flag value, missing run folder, corrupt checkpoint, bad data
file) ends with one sentence on stderr and exit code 2, never with a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

EXIT_USAGE = 2

KERNELS = ("s4d", "bilinear", "dss-exp", "dss-softmax")
INITS = ("legs", "lin", "inv", "real", "random")


class UserError(Exception):
    """A mistake of the user's, reported as one sentence and exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-sentence error (no usage block): what is wrong, and where help is."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help').\n")


# ----------------------------------------------------------------------------- argument types

def _number(cast, ok, expected: str):
    """An argparse type: parse with ``cast`` and require ``ok(value)``, else say what was expected."""
    noun = "an integer" if cast is int else "a number"

    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text!r} must be {expected}")
        return v
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive finite number")
_nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "non-negative and finite")
_fraction = _number(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def _even_state_dim(text: str) -> int:
    v = _positive_int(text)
    if v % 2:
        raise argparse.ArgumentTypeError(
            f"{text!r} is odd; the state dimension is the real order of conjugate pairs and must be even")
    return v


def _data_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. max_length=500)")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


# ----------------------------------------------------------------------------- shared pieces

def _load_data(spec: str, options: dict):
    from .data import load_dataset
    return load_dataset(spec, **options)


def _model_kwargs_for(data, args) -> dict:
    kw = dict(
        d_input=data.d_input if data.d_input is not None else 1,
        d_output=data.n_classes if data.task == "classification" else 1,
        d_model=args.d_model, layers=args.layers, state_dim=args.state_dim,
        kernel=args.kernel, init=args.init, dropout=args.dropout, prenorm=args.prenorm,
        norm=args.norm, pool=args.pool, task=data.task, l_max=data.seq_len,
        vocab_size=data.vocab_size,
    )
    return kw


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


# ----------------------------------------------------------------------------- commands

def cmd_train(args) -> int:
    import torch
    from . import checkpoint as ckpt
    from .nn import SequenceModel
    from .train import TrainConfig, distributed, train

    out = Path(args.out)
    if args.resume:
        if not (out / ckpt.STATE).is_file():
            raise UserError(f"--resume was given but {out} holds no training state to resume; drop --resume to start a new run.")
        run_cfg = ckpt.read_run_config(out)
        tcfg = TrainConfig(**run_cfg["train"])
        data_cfg = run_cfg.get("data", {})
        data = _load_data(data_cfg["spec"], data_cfg.get("options", {}))
        model = SequenceModel(**run_cfg["model"])
    else:
        if (out / ckpt.CONFIG).exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out.")
        options = dict(args.data_option or [])
        data = _load_data(args.data, options)
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, ssm_lr=args.ssm_lr,
                           weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=args.grad_clip,
                           seed=args.seed, device=args.device,
                           hankel_reg=args.hankel_reg, hankel_order=args.hankel_order)
        torch.manual_seed(args.seed)
        if args.init_from:
            model, src_cfg = ckpt.load_model(Path(args.init_from))
            src_data = src_cfg.get("data", {})
            if src_data.get("spec") not in (None, args.data) and not args.force:
                raise UserError(
                    f"--init-from run {args.init_from} was made on data {src_data.get('spec')!r}, not {args.data!r}; pass --force to train it on other data.")
        else:
            try:
                model = SequenceModel(**_model_kwargs_for(data, args))
            except ValueError as exc:
                raise UserError(str(exc)) from None
        run_cfg = {"data": {"spec": args.data, "options": options}, "init_from": args.init_from}
        _check_hankel_args(args, model)
    rank, _ = distributed()
    summary = train(model, data, tcfg, out, run_config=run_cfg, resume=args.resume, progress=_progress(args))
    if rank == 0:
        if args.json:
            _print_json(summary)
        else:
            acc = summary.get("test_accuracy")
            print(f"run {out}: best val accuracy {summary['best_val_accuracy']} (epoch {summary['best_epoch']}), "
                  f"test accuracy {acc if acc is None else round(acc, 4)}, {summary['wall_s']:.1f} s")
    return 0


def _check_hankel_args(args, model) -> None:
    if args.hankel_order is not None and args.hankel_reg == 0:
        raise UserError("--hankel-order needs --hankel-reg WEIGHT > 0 (the weight of the penalty it selects).")
    if args.hankel_order is not None and args.hankel_order >= max(model.state_dims):
        raise UserError(f"--hankel-order {args.hankel_order} is not below the state dimension {max(model.state_dims)}, "
                        "so there is nothing beyond it to penalise; choose a smaller order.")


def cmd_evaluate(args) -> int:
    from . import checkpoint as ckpt
    from .train import evaluate, resolve_device

    model, cfg = ckpt.load_model(Path(args.run))
    data_cfg = cfg.get("data", {})
    spec = args.data or data_cfg.get("spec")
    if spec is None:
        raise UserError(f"{args.run} records no data set; pass --data NAME|PATH.")
    options = dict(args.data_option) if args.data_option else (data_cfg.get("options", {}) if not args.data else {})
    data = _load_data(spec, options)
    x, y, lengths = data.split(args.split)
    device = resolve_device(args.device)
    model.to(device)
    res = evaluate(model, x, y, lengths, task=data.task, device=device)
    res.update(split=args.split, data=spec, run=str(args.run))
    if args.json:
        _print_json(res)
    else:
        acc = "n/a" if res["accuracy"] is None else f"{res['accuracy']:.4f}"
        print(f"{args.run} on {spec} [{args.split}]: accuracy {acc}, loss {res['loss']:.4f} ({res['n']} samples)")
    return 0


def model_info(model) -> dict:
    cfg = model.config
    return {"kernel": cfg.get("kernel"), "init": cfg.get("init"), "d_model": cfg.get("d_model"),
            "layers": cfg.get("layers"), "state_dims": list(model.state_dims), **model.parameter_counts()}


def cmd_info(args) -> int:
    from . import checkpoint as ckpt

    model, cfg = ckpt.load_model(Path(args.run))
    info = model_info(model)
    info["run"] = str(args.run)
    info["data"] = cfg.get("data", {}).get("spec")
    summary = Path(args.run) / "summary.json"
    if summary.is_file():
        info["summary"] = ckpt.read_json(summary)
    if args.json:
        _print_json(info)
    else:
        print(f"run {args.run} (data {info['data']})")
        print(f"  kernel {info['kernel']}, init {info['init']}, d_model {info['d_model']}, layers {info['layers']}")
        print(f"  state dims per layer: {info['state_dims']}")
        print(f"  parameters: {info['params']} total = {info['ssm_params']} SSM + {info['other_params']} other")
        s = info.get("summary", {})
        if "compressed_from" in s:
            print(f"  compressed from {s['compressed_from']} ({s['method']}, rank {s['rank']}, energy {s['energy']}): "
                  f"test accuracy {s.get('test_accuracy_before')} before, {s.get('test_accuracy')} after, no retraining")
        elif s:
            print(f"  best val accuracy {s.get('best_val_accuracy')}, test accuracy {s.get('test_accuracy')}")
    return 0


def cmd_data(args) -> int:
    from .data import builtin_names
    names = builtin_names()
    if args.json:
        _print_json(names)
    else:
        for name, desc in names.items():
            print(f"{name:10s} {desc}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 32,16,8)") from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def _seed_list(text: str) -> list[int]:
    """`3` means seeds 0,1,2; `0,5,7` lists them."""
    values = _int_list(text)
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: the number of seeds must be positive")
        return list(range(values[0]))
    return values


def cmd_compress(args) -> int:
    from .compress import compress_run

    if (args.rank is None) == (args.energy is None):
        raise UserError("give exactly one of --rank r (real order per channel) or --energy e (fraction of Hankel singular values).")
    horizon = {"auto": "auto", "infinite": None}.get(args.horizon)
    if horizon is None and args.horizon != "infinite":
        try:
            horizon = int(args.horizon)
        except ValueError:
            raise UserError(f"--horizon {args.horizon!r} is not auto, infinite or a positive integer length.") from None
    summary = compress_run(Path(args.run), Path(args.out), rank=args.rank, energy=args.energy, horizon=horizon)
    if args.json:
        _print_json(summary)
        return 0
    print(f"compressed {args.run} -> {args.out}: state dims {summary['state_dims_before']} -> {summary['state_dims']}")
    for lay in summary["layers"]:
        extra = f", H-inf error max {lay['hinf_error_max']:.3g} (bound holds: {lay['bound_holds']})" if "hinf_error_max" in lay else ""
        print(f"  layer {lay['layer']}: mean order {lay['order_mean']:.1f}, error bound max {lay['error_bound_max']:.3g}"
              f"{extra}, kernel rel. error max {lay['kernel_rel_error_max']:.3g}")
    if "test_accuracy" in summary:
        print(f"test accuracy without retraining: {summary['test_accuracy_before']:.4f} before, {summary['test_accuracy']:.4f} after")
    return 0


def _experiment_config(args):
    from .experiment import ExperimentConfig
    return ExperimentConfig(
        data=args.data, data_options=dict(args.data_option or []), state_dim=args.state_dim, ranks=args.ranks,
        seeds=args.seeds, epochs=args.epochs, main_epochs=args.main_epochs,
        model=dict(d_model=args.d_model, layers=args.layers, kernel=args.kernel, dropout=args.dropout,
                   prenorm=args.prenorm, norm=args.norm, pool=args.pool),
        train=dict(batch_size=args.batch_size, lr=args.lr, ssm_lr=args.ssm_lr, weight_decay=args.weight_decay,
                   warmup=args.warmup, grad_clip=args.grad_clip, device=args.device))


def cmd_experiment(args) -> int:
    from .experiment import markdown_table, run_experiment, summarize

    cfg = _experiment_config(args)
    out = Path(args.out)
    old = out / "experiment.json"
    if old.is_file():
        from .checkpoint import read_json
        from dataclasses import asdict
        if read_json(old) != json.loads(json.dumps(asdict(cfg))):
            raise UserError(f"{out} holds an experiment with other settings; rerun with the same flags to resume it, or choose another --out.")
    rows = run_experiment(cfg, out, progress=_progress(args))
    print(markdown_table(summarize(rows)))
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_demo(args) -> int:
    """The compression protocol on the built-in digits data, at a size for a laptop."""
    argv = ["experiment", "--data", "digits", "--state-dim", "64", "--ranks", "16,4", "--seeds", ",".join(map(str, args.seeds)) + ",",
            "--epochs", str(args.epochs), "--d-model", "64", "--layers", "2", "--out", str(args.out)]
    ns = build_parser().parse_args(argv + (["--quiet"] if args.quiet else []))
    return cmd_experiment(ns)


# ----------------------------------------------------------------------------- parser

def _add_model_args(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--state-dim", type=_even_state_dim, default=64, metavar="N",
                   help="real state order N per channel (N/2 stored conjugate modes; default 64)")
    g.add_argument("--kernel", choices=KERNELS, default="s4d", help="DSS kernel (default s4d)")
    g.add_argument("--init", choices=INITS, default="legs", help="initialisation of A (default legs = Skew-HiPPO)")
    g.add_argument("--d-model", type=_positive_int, default=64, help="channels H (default 64)")
    g.add_argument("--layers", type=_positive_int, default=4, help="residual SSM blocks (default 4)")
    g.add_argument("--dropout", type=_fraction, default=0.0, help="dropout rate (default 0)")
    g.add_argument("--prenorm", action="store_true", help="normalise before each block instead of after")
    g.add_argument("--norm", choices=("layer", "batch"), default="layer", help="normalisation (default layer)")
    g.add_argument("--pool", choices=("mean", "last"), default="mean", help="sequence pooling (default mean)")


def _add_train_args(p) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=_positive_int, default=10, help="epochs (default 10)")
    g.add_argument("--batch-size", type=_positive_int, default=64, help="global batch size (default 64)")
    g.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate of non-SSM parameters (default 1e-2)")
    g.add_argument("--ssm-lr", type=_nonneg_float, default=1e-3,
                   help="learning rate of A, B and the step size, no weight decay (default 1e-3)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=0.01, help="AdamW weight decay (default 0.01)")
    g.add_argument("--warmup", type=_fraction, default=0.05, help="fraction of steps in linear warmup (default 0.05)")
    g.add_argument("--grad-clip", type=_nonneg_float, default=1.0, help="max gradient norm, 0 = off (default 1)")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default auto)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ssmcompress",
        description="Train S4 models with diagonal state-space layers and compress them with balanced truncation.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a model (or continue one with --resume / --init-from)",
                       description="Train a SequenceModel on a built-in data set or a .npz file and write a run folder "
                                   "(config.json, model.safetensors, metrics.jsonl). Under torchrun it uses DDP.")
    t.add_argument("--data", default="digits", metavar="NAME|PATH",
                   help="built-in data set (see 'ssmcompress data') or a .npz file (default digits)")
    t.add_argument("--data-option", type=_data_option, action="append", metavar="KEY=VALUE",
                   help="data set option, repeatable (e.g. max_length=500 for listops)")
    t.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    t.add_argument("--init-from", metavar="RUN", help="start from the model of this run folder (e.g. a compressed one)")
    t.add_argument("--force", action="store_true", help="with --init-from: allow a different data set")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    _add_model_args(t)
    _add_train_args(t)
    h = t.add_argument_group("Hankel-norm regularisation")
    h.add_argument("--hankel-reg", type=_nonneg_float, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x the mean over all channels of all SSM layers of their Hankel singular values "
                        "(beyond --hankel-order) to the loss, so that balanced truncation loses less (default 0: off)")
    h.add_argument("--hankel-order", type=_nonneg_int, default=None, metavar="r",
                   help="penalise only the Hankel singular values beyond real order r, the ones truncation to r "
                        "discards (default: all of them, the Hankel nuclear norm)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run folder on a split",
                       description="Evaluate the model of a run folder on its data set (or --data) and print accuracy and loss.")
    e.add_argument("run", metavar="RUN", help="run folder")
    e.add_argument("--data", metavar="NAME|PATH", help="data set (default: the one the run was trained on)")
    e.add_argument("--data-option", type=_data_option, action="append", metavar="KEY=VALUE", help="data set option")
    e.add_argument("--split", choices=("train", "val", "test"), default="test", help="split (default test)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    e.add_argument("--json", action="store_true", help="print one JSON object with accuracy and loss")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("info", help="architecture and parameter counts of a run folder",
                       description="Show the architecture of a run folder and its parameters split into SSM parameters and the rest.")
    i.add_argument("run", metavar="RUN", help="run folder")
    i.add_argument("--json", action="store_true", help="print one JSON object (state_dims, ssm_params, params, ...)")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("data", help="list the built-in data sets", description="List the built-in offline data sets.")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=cmd_data)

    c = sub.add_parser("compress", help="reduce every SSM layer of a run by balanced truncation",
                       description="Compress every SSM layer of a run folder by balanced truncation and write a new run "
                                   "folder that evaluate, info and train --init-from accept; prints the accuracy before "
                                   "and after compression without retraining.")
    c.add_argument("run", metavar="RUN", help="run folder of the trained model")
    c.add_argument("--rank", type=_even_state_dim, metavar="r", help="real order kept per channel (even)")
    c.add_argument("--energy", type=_positive_float, metavar="e",
                   help="instead of --rank: keep the smallest order whose Hankel singular values reach this fraction")
    c.add_argument("--horizon", default="auto", metavar="auto|infinite|L",
                   help="Gramians: auto (infinite; the kernel length for dss-softmax), infinite, or a length L")
    c.add_argument("--out", required=True, metavar="RUN_R", help="run folder to write")
    c.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    c.set_defaults(func=cmd_compress)

    x = sub.add_parser("experiment", help="the paper's protocol: pre-train, compress, main training, baselines, report",
                       description="For each seed: pre-train at --state-dim from Skew-HiPPO; for each rank: balanced "
                                   "truncation, evaluation without retraining, main training from the reduced parameters, "
                                   "and baselines of that size from Skew-HiPPO and S4D-Lin. Writes results.json and "
                                   "report.md with figures; a rerun skips finished runs and resumes interrupted ones.")
    x.add_argument("--data", default="smnist", metavar="NAME|PATH", help="data set (default smnist)")
    x.add_argument("--data-option", type=_data_option, action="append", metavar="KEY=VALUE", help="data set option")
    x.add_argument("--ranks", type=_int_list, default=[32, 16, 8], metavar="r1,r2,...",
                   help="reduced real orders (default 32,16,8)")
    x.add_argument("--seeds", type=_seed_list, default=[0, 1, 2], metavar="S",
                   help="number of seeds (3 = seeds 0,1,2) or a comma-separated list (default 3)")
    x.add_argument("--main-epochs", type=_positive_int, default=None,
                   help="epochs of main training and baselines (default: --epochs)")
    x.add_argument("--out", required=True, metavar="DIR", help="experiment folder")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(x)
    _add_train_args(x)
    for a in x._actions:
        if a.dest in ("init", "seed"):
            a.help = argparse.SUPPRESS
    x.set_defaults(func=cmd_experiment)

    m = sub.add_parser("demo", help="the demo that `make demo` runs",
                       description="The compression protocol on the built-in digits data at laptop size "
                                   "(N=64 -> r=16,4, one seed): prints the accuracy table and writes a report.")
    m.add_argument("--out", default="demo_run", help="experiment folder (default demo_run)")
    m.add_argument("--epochs", type=_positive_int, default=8, help="epochs per training (default 8)")
    m.add_argument("--seeds", type=_seed_list, default=[0], help="seeds (default 1)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=cmd_demo)
    return p


def _init_distributed() -> None:
    """Join the process group that ``torchrun`` describes in the environment (no-op otherwise)."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import RunError
    try:
        _init_distributed()
        return args.func(args)
    except (UserError, RunError, ValueError, FileNotFoundError, FloatingPointError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"ssmcompress {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ssmcompress {args.command}: interrupted; rerun with --resume to continue.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
