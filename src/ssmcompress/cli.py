"""``ssmcompress`` command line: train, evaluate, info, compress, experiment, data, import-s4, demo, export, stream.

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
METHOD_NAMES = ("bt", "bt-noretrain", "modal", "modal-noretrain", "legs", "lin", "legs-budget", "warmstart",
                "original-continued", "bsp", "bsp-noretrain", "h2", "h2-noretrain", "modal-hinf", "modal-hinf-noretrain",
                "bt-adaptive", "bt-adaptive-noretrain", "last", "last-noretrain",
                "hankel-bt", "hankel-bt-noretrain", "in-training", "legs-schedule")
DEFAULT_METHODS = METHOD_NAMES[:9]
REDUCTIONS = ("bt", "bsp", "h2", "modal", "modal-hinf")      # compress.METHODS, without importing torch for --help
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
_share = _number(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def _budget(text: str):
    """--budget: a whole number of stored modes, or a fraction in (0, 1)."""
    if "." in text or "e" in text.lower():
        return _number(float, lambda v: 0 < v < 1, "a fraction in (0, 1) or a whole number of stored modes")(text)
    return _positive_int(text)


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


def check_model_fits_data(model, data, run, spec) -> None:
    """One sentence (UserError) when the model of ``run`` cannot take ``data`` (inputs, classes, task)."""
    cfg = model.config
    if data.task != cfg.get("task", "classification"):
        raise UserError(f"{run} is a {cfg.get('task')} model but {spec} is a {data.task} task; "
                        "give data of the kind it was trained on.")
    if (cfg.get("vocab_size") is None) != (data.vocab_size is None):
        kind = "tokens" if data.vocab_size is not None else "real-valued features"
        raise UserError(f"{run} takes {'tokens' if cfg.get('vocab_size') else 'real-valued features'} "
                        f"but {spec} holds {kind}; give data of the kind it was trained on.")
    if data.vocab_size is not None and data.vocab_size > cfg["vocab_size"]:
        raise UserError(f"{run} knows {cfg['vocab_size']} token ids but {spec} uses {data.vocab_size}; "
                        "give data with the model's vocabulary.")
    if data.vocab_size is None and data.d_input != cfg["d_input"]:
        raise UserError(f"{run} takes {cfg['d_input']} feature(s) per step but {spec} has {data.d_input}; "
                        "give data with the model's feature width.")
    if data.task == "classification" and data.n_classes > cfg["d_output"]:
        raise UserError(f"{run} predicts {cfg['d_output']} classes but {spec} has {data.n_classes} "
                        f"(labels up to {data.n_classes - 1}); give data with at most {cfg['d_output']} classes.")


def _model_kwargs_for(data, args) -> dict:
    return dict(data.model_shape(), d_model=args.d_model, layers=args.layers, state_dim=args.state_dim,
                kernel=args.kernel, init=args.init, dropout=args.dropout, prenorm=args.prenorm,
                norm=args.norm, pool=args.pool)


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
        _check_hankel_relative(args)
        _check_anneal(args)
        if args.min_epochs and not args.patience:
            raise UserError(f"--min-epochs {args.min_epochs} needs --patience N > 0 (the early stop it delays).")
        if args.min_epochs > args.epochs:
            raise UserError(f"--min-epochs {args.min_epochs} is above --epochs {args.epochs}; give at most --epochs.")
        if args.select_rank and args.reduce_to:
            raise UserError(f"--select-rank {args.select_rank} and --reduce-to {args.reduce_to} exclude each other: "
                            "a model reduced in training is selected at its own size.")
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, ssm_lr=args.ssm_lr,
                           weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=args.grad_clip,
                           seed=args.seed, device=args.device, patience=args.patience,
                           hankel_reg=args.hankel_reg, hankel_order=args.hankel_order,
                           hankel_sample=args.hankel_sample, hankel_relative=args.hankel_relative,
                           hankel_horizon=args.hankel_horizon, reduce_to=args.reduce_to, reduce_at=args.reduce_at or [], reduce_method=args.reduce_method,
                           anneal=args.anneal_on_stop, min_epochs=args.min_epochs, select_rank=args.select_rank)
        torch.manual_seed(args.seed)
        if args.init_from:
            model, src_cfg = ckpt.load_model(Path(args.init_from))
            src_data = src_cfg.get("data", {})
            if src_data.get("spec") not in (None, args.data) and not args.force:
                raise UserError(
                    f"--init-from run {args.init_from} was made on data {src_data.get('spec')!r}, not {args.data!r}; pass --force to train it on other data.")
            check_model_fits_data(model, data, args.init_from, args.data)
        else:
            try:
                model = SequenceModel(**_model_kwargs_for(data, args))
            except ValueError as exc:
                raise UserError(str(exc)) from None
        run_cfg = {"data": {"spec": args.data, "options": options}, "init_from": args.init_from}
        _check_hankel_args(args, model)
        if args.select_rank and args.select_rank >= min(model.state_dims):
            raise UserError(f"--select-rank {args.select_rank} does not reduce a model of state dims "
                            f"{model.state_dims}; give a real order below {min(model.state_dims)}.")
    rank, _ = distributed()
    summary = train(model, data, tcfg, out, run_config=run_cfg, resume=args.resume, progress=_progress(args))
    if rank == 0:
        if args.json:
            _print_json(summary)
        else:
            acc = summary.get("test_accuracy")
            chosen = (f", chosen by the {summary['selected_by']}: {summary['best_val_accuracy_reduced']}"
                      if summary.get("selected_by") else "")
            print(f"run {out}: best val accuracy {summary['best_val_accuracy']} (epoch {summary['best_epoch']}{chosen}), "
                  f"test accuracy {acc if acc is None else round(acc, 4)}, {summary['wall_s']:.1f} s")
    return 0


def _check_anneal(args) -> None:
    if args.anneal_on_stop and not args.patience:
        raise UserError(f"--anneal-on-stop {args.anneal_on_stop} needs --patience N > 0 (the early stop it replaces).")


def _check_hankel_relative(args) -> None:
    if args.hankel_relative and (args.hankel_reg == 0 or args.hankel_order is None):
        raise UserError("--hankel-relative needs --hankel-reg WEIGHT > 0 and --hankel-order r (the share of the "
                        "Hankel singular values beyond r).")


def _check_hankel_args(args, model) -> None:
    if args.hankel_sample != 1.0 and args.hankel_reg == 0:
        raise UserError("--hankel-sample needs --hankel-reg WEIGHT > 0 (the penalty it samples).")
    if args.hankel_order is not None and args.hankel_reg == 0:
        raise UserError("--hankel-order needs --hankel-reg WEIGHT > 0 (the weight of the penalty it selects).")
    if args.hankel_horizon != "auto" and args.hankel_reg == 0:
        raise UserError(f"--hankel-horizon {args.hankel_horizon} needs --hankel-reg WEIGHT > 0 (the penalty whose "
                        "Gramians it chooses).")
    if args.hankel_horizon == "finite" and any(layer.l_max is None for layer in model.ssm_layers()):
        raise UserError("--hankel-horizon finite needs the model's sequence length, but the model has none (a "
                        "data set of varying lengths); use --hankel-horizon auto.")
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
    check_model_fits_data(model, data, args.run, spec)
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
            chosen = (f" (epoch chosen by the {s['selected_by']}: {s.get('best_val_accuracy_reduced')})"
                      if s.get("selected_by") else "")
            print(f"  best val accuracy {s.get('best_val_accuracy')}{chosen}, test accuracy {s.get('test_accuracy')}")
    return 0


def cmd_data(args) -> int:
    from .data import builtin_names, loader_names
    names = builtin_names()
    folders = loader_names()
    if args.json:
        _print_json({**names, **{f"{n}:DIR": entry for n, entry in folders.items()}})
    else:
        for name, desc in names.items():
            print(f"{name:10s} {desc}")
        print("\nbenchmark files from a folder you name (--data NAME:DIR, nothing downloaded):")
        for name, entry in folders.items():
            print(f"{name + ':DIR':18s} {entry['description']}\n{'':18s} expects {entry['layout']}")
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


def _horizon(text: str):
    """--horizon: auto, infinite, finite or a positive integer length."""
    if text in ("auto", "infinite", "finite"):
        return text
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise UserError(f"--horizon {text!r} is not auto, infinite, finite or a positive integer length.")
    return v


def cmd_compress(args) -> int:
    from .compress import compress_run

    if sum(v is not None for v in (args.rank, args.energy, args.budget)) != 1:
        raise UserError("give exactly one of --rank r (real order per channel), --energy e (fraction of Hankel "
                        "singular values) or --budget B (stored modes in all layers, or a fraction).")
    if args.energy is not None and args.method not in ("bt", "bsp"):
        raise UserError(f"--energy works with --method bt or bsp only; give --rank or --budget for {args.method}.")
    summary = compress_run(Path(args.run), Path(args.out), rank=args.rank, energy=args.energy, method=args.method,
                           horizon=_horizon(args.horizon), refit=args.refit, budget=args.budget)
    if args.json:
        _print_json(summary)
        return 0
    print(f"compressed {args.run} -> {args.out} ({args.method}, refit {summary['refit']}): "
          f"state dims {summary['state_dims_before']} -> {summary['state_dims']}, {summary['ssm_params']} SSM parameters")
    for lay in summary["layers"]:
        # 2 x the discarded Hankel singular values bounds the H-inf error only for infinite-horizon BT/BSP without
        # refit or moved modes (then bound_holds is checked); otherwise say what the number is, not what it bounds
        extra = ""
        if "error_bound_max" in lay:
            extra = (f", error bound max {lay['error_bound_max']:.3g}" if "bound_holds" in lay else
                     f", 2 x discarded Hankel s.v. max {lay['error_bound_max']:.3g}"
                     + ("" if lay.get("horizon") is None else f" ({lay['horizon']}-tap Gramians)"))
        if "hinf_error_max" in lay:
            extra += f", H-inf error max {lay['hinf_error_max']:.3g}"
            if lay.get("horizon") is not None:
                extra += f" (infinite horizon; the model uses {lay['horizon']} taps)"
        if "bound_holds" in lay:
            extra += f" (bound holds: {lay['bound_holds']})"
        print(f"  layer {lay['layer']}: state dim {lay['state_dim_after']}, real order {lay['order_min']}-{lay['order_max']} "
              f"(mean {lay['order_mean']:.1f}){extra}, kernel rel. error mean {lay['kernel_rel_error_mean']:.3g}")
    if "test_accuracy" in summary:
        print(f"test accuracy without retraining: {summary['test_accuracy_before']:.4f} before, {summary['test_accuracy']:.4f} after")
    return 0


def _experiment_config(args):
    from .experiment import ExperimentConfig
    return ExperimentConfig(
        data=args.data, data_options=dict(args.data_option or []), state_dim=args.state_dim, ranks=args.ranks,
        seeds=args.seeds, epochs=args.epochs, main_epochs=args.main_epochs, kernels=args.kernel,
        methods=args.methods, horizon=_horizon(args.horizon), refit=args.refit, hankel_reg=args.hankel_reg,
        hankel_order=args.hankel_order, hankel_sample=args.hankel_sample, hankel_relative=args.hankel_relative,
        hankel_horizon=args.hankel_horizon,
        hankel_select_rank=args.hankel_select_rank, model=dict(d_model=args.d_model, layers=args.layers, dropout=args.dropout,
                   prenorm=args.prenorm, norm=args.norm, pool=args.pool),
        train=dict(batch_size=args.batch_size, lr=args.lr, ssm_lr=args.ssm_lr, weight_decay=args.weight_decay,
                   warmup=args.warmup, grad_clip=args.grad_clip, device=args.device, patience=args.patience,
                   # only when asked: experiment folders made before the option existed keep their settings
                   **({"anneal": args.anneal_on_stop} if args.anneal_on_stop else {})))


def _name_list(valid, what):
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in valid]
        if not names or bad:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {what} ({', '.join(valid)})")
        return list(dict.fromkeys(names))
    return parse


def cmd_experiment(args) -> int:
    from .experiment import markdown_table, run_experiment, summarize

    if args.hankel_relative and args.hankel_order is None:
        raise UserError("--hankel-relative needs --hankel-order r (the share of the Hankel singular values beyond r).")
    _check_anneal(args)
    cfg = _experiment_config(args)
    out = Path(args.out)
    if args.include_results and not args.report_only:
        raise UserError("--include-results needs --report-only: included rows only fill in a report, they are not "
                        "runs that training could build on.")
    try:
        rows = run_experiment(cfg, out, progress=_progress(args), report_only=args.report_only,
                              include=args.include_results)
    except FileNotFoundError as exc:
        if not args.report_only:
            raise
        raise UserError(str(exc)) from None
    print(markdown_table(summarize(rows)))
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_demo(args) -> int:
    """The compression protocol on the built-in digits data, at a size for a laptop."""
    argv = ["experiment", "--data", "digits", "--state-dim", "64", "--ranks", "16,4", "--seeds", ",".join(map(str, args.seeds)) + ",",
            "--epochs", str(args.epochs), "--d-model", "32", "--layers", "2", "--out", str(args.out)]
    ns = build_parser().parse_args(argv + (["--quiet"] if args.quiet else []))
    return cmd_experiment(ns)


def cmd_import_s4(args) -> int:
    """Convert a state-spaces/s4 S4D checkpoint into a run folder."""
    from .import_s4 import check_new_folder, read_state_dict, s4d_model, write_imported_run
    from .train import evaluate

    out = Path(args.out)
    check_new_folder(out)
    model = s4d_model(read_state_dict(args.checkpoint), prenorm=args.prenorm)
    data_cfg = data = None
    if args.data:  # checked before anything is written
        data_cfg = {"spec": args.data, "options": dict(args.data_option or [])}
        data = _load_data(args.data, data_cfg["options"])
        check_model_fits_data(model, data, args.checkpoint, args.data)
    write_imported_run(model, args.checkpoint, out, prenorm=args.prenorm, data=data_cfg)
    summary = {"imported_from": str(args.checkpoint), "prenorm": bool(args.prenorm), **model_info(model)}
    if data is not None:
        res = evaluate(model, *data.split("test"), task=data.task)
        summary.update(test_accuracy=res["accuracy"], test_loss=res["loss"])
        from .checkpoint import write_json
        write_json(out / "summary.json", summary)
    if args.json:
        _print_json(summary)
    else:
        acc = "" if "test_accuracy" not in summary else f", test accuracy {summary['test_accuracy']:.4f} on {args.data}"
        print(f"imported {args.checkpoint} -> {out}: {summary['layers']} S4D layers, d_model {summary['d_model']}, "
              f"state dims {summary['state_dims']}{acc}")
    return 0


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
    g.add_argument("--patience", type=_nonneg_int, default=0,
                   help="stop after this many epochs without a better validation score; 0 = off (default 0)")
    g.add_argument("--anneal-on-stop", type=_nonneg_int, default=0, metavar="EPOCHS",
                   help="with --patience: when validation stops rising, go back to the best checkpoint and train "
                        "EPOCHS more with the learning rate decaying to zero, instead of stopping at a learning "
                        "rate the cosine schedule has not yet lowered (default 0: plain stop)")
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
                   help="built-in data set, NAME:DIR benchmark files (see 'ssmcompress data') or a .npz file (default digits)")
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
    t.add_argument("--min-epochs", type=_nonneg_int, default=0, metavar="E",
                   help="with --patience: never stop before epoch E (in-training reduction has this floor at its last "
                        "reduction; a run without reductions on the same schedule is its control; default 0)")
    t.add_argument("--select-rank", type=_even_state_dim, metavar="r",
                   help="choose the best epoch (and, with --patience, stop) by the validation accuracy of the model "
                        "reduced to real order r with --reduce-method, without retraining, instead of the full "
                        "model's: for a model that will be deployed compressed, meant to be used with --hankel-reg "
                        "(default: off)")
    h = t.add_argument_group("Hankel-norm regularisation")
    g = t.add_argument_group("in-training reduction (CompreSSM's schedule)")
    g.add_argument("--reduce-to", type=_even_state_dim, metavar="r",
                   help="reduce every layer to real order r during training, in geometric steps")
    g.add_argument("--reduce-at", type=_int_list, metavar="E1,E2,...",
                   help="epochs after which to reduce (the last one reaches --reduce-to; all below --epochs)")
    g.add_argument("--reduce-method", choices=REDUCTIONS, default="bt",
                   help="reduction used in training (default bt)")
    h.add_argument("--hankel-reg", type=_nonneg_float, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x the mean over all channels of all SSM layers of their Hankel singular values "
                        "(beyond --hankel-order) to the loss, so that balanced truncation loses less (default 0: off)")
    h.add_argument("--hankel-order", type=_nonneg_int, default=None, metavar="r",
                   help="penalise only the Hankel singular values beyond real order r, the ones truncation to r "
                        "discards (default: all of them, the Hankel nuclear norm)")
    h.add_argument("--hankel-sample", type=_share, default=1.0, metavar="FRACTION",
                   help="compute the penalty on this fraction of the channels per step, drawn at random (an "
                        "unbiased estimate of the mean over all channels, at about FRACTION of the cost; "
                        "default 1: every channel)")
    h.add_argument("--hankel-relative", action="store_true",
                   help="penalise, per channel, the Hankel singular values beyond --hankel-order as a share of all "
                        "of them (does not change when the kernel is scaled, so the penalty cannot be met by "
                        "shrinking the kernel; default: their sum, which compressed far better on mnist1d, see "
                        "README)")
    h.add_argument("--hankel-horizon", choices=("auto", "finite"), default="auto",
                   help="Gramians of the penalty: auto = infinite horizon for stable layers (the values behind "
                        "BT's error bound), finite = over the model's sequence length, the Gramians `compress` "
                        "reduces with by default (default auto)")
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

    d = sub.add_parser("data", help="list the built-in data sets and the benchmark-file loaders",
                       description="List the built-in offline data sets and the NAME:DIR loaders with the folder "
                                   "layout each expects.")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=cmd_data)

    c = sub.add_parser("compress", help="reduce every SSM layer of a run (balanced truncation or modal)",
                       description="Compress every SSM layer of a run folder and write a new run folder that evaluate, "
                                   "info and train --init-from accept; prints the accuracy before and after compression "
                                   "without retraining. With --rank r every layer stores exactly r/2 modes per channel: "
                                   "the shapes and parameter count of a fresh --state-dim r model.")
    c.add_argument("run", metavar="RUN", help="run folder of the trained model")
    c.add_argument("--rank", type=_even_state_dim, metavar="r", help="real order per channel (even): r/2 stored modes")
    c.add_argument("--energy", type=_positive_float, metavar="e",
                   help="instead of --rank (bt only): keep the smallest order whose Hankel singular values reach this fraction")
    c.add_argument("--budget", type=_budget, metavar="B",
                   help="instead of --rank: stored modes per channel summed over layers (integer), or a fraction in "
                        "(0, 1) of the model's; per-layer sizes from one global threshold on layer-normalised "
                        "Hankel singular values (balanced methods) or mode scores (modal methods, as LAST)")
    c.add_argument("--method", choices=REDUCTIONS, default="bt",
                   help="bt = balanced truncation (default); bsp = balanced singular perturbation (matches the DC "
                        "gain); h2 = IRKA H2-optimal reduction started from BT; modal = keep the modes with the largest "
                        "H2 score; modal-hinf = the largest H-infinity score (LAST)")
    c.add_argument("--horizon", default="auto", metavar="auto|infinite|finite|L",
                   help="Gramians over an infinite horizon or the kernel length (finite) or L taps; "
                        "auto = finite, the measured default (layers with unstable modes always use the kernel length)")
    c.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="refit C and D by least squares on each channel's length-L response (default on)")
    c.add_argument("--out", required=True, metavar="RUN_R", help="run folder to write")
    c.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    c.set_defaults(func=cmd_compress)

    x = sub.add_parser("experiment", help="the paper's protocol with equal-size controls, paired statistics and a report",
                       description="For each kernel and seed: pre-train at --state-dim from Skew-HiPPO; for each rank r, "
                                   "models of exactly that size: balanced truncation (bt, bt-noretrain), modal truncation "
                                   "(modal, modal-noretrain), fresh Skew-HiPPO and S4D-Lin (legs, lin), Skew-HiPPO with the "
                                   "same total budget (legs-budget), pre-trained non-SSM weights with a fresh SSM "
                                   "(warmstart); and the original trained on (original-continued). Writes results.json and "
                                   "report.md with paired t-tests and Wilcoxon p-values against legs and legs-budget, and "
                                   "figures; a rerun skips finished runs and resumes interrupted ones.")
    x.add_argument("--data", default="smnist", metavar="NAME|PATH", help="data set (default smnist)")
    x.add_argument("--data-option", type=_data_option, action="append", metavar="KEY=VALUE", help="data set option")
    x.add_argument("--ranks", type=_int_list, default=[32, 16, 8], metavar="r1,r2,...",
                   help="reduced real orders (default 32,16,8)")
    x.add_argument("--seeds", type=_seed_list, default=[0, 1, 2, 3, 4], metavar="S",
                   help="number of seeds (5 = seeds 0..4) or a comma-separated list (default 5)")
    x.add_argument("--main-epochs", type=_positive_int, default=None,
                   help="epoch cap of main training and baselines (default: --epochs)")
    x.add_argument("--methods", type=_name_list(METHOD_NAMES, "methods"), default=list(DEFAULT_METHODS),
                   metavar="m1,m2,...", help=f"methods to run (default: {','.join(DEFAULT_METHODS)}; "
                                            f"also {','.join(METHOD_NAMES[9:])})")
    x.add_argument("--horizon", default="auto", metavar="auto|infinite|finite|L",
                   help="Gramians of the reductions (default auto = finite: the model's length)")
    x.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="least-squares refit of C and D after reduction (default on)")
    x.add_argument("--hankel-reg", type=_positive_float, default=0.1, metavar="WEIGHT",
                   help="Hankel penalty weight of the pre-training behind hankel-bt (default 0.1)")
    x.add_argument("--hankel-order", type=_nonneg_int, default=None, metavar="r",
                   help="hankel-bt's penalty covers only the Hankel singular values beyond real order r (default: "
                        "all of them, the nuclear norm; the tail beyond the smallest rank kept far more accuracy "
                        "without retraining on mnist1d, see README)")
    x.add_argument("--hankel-sample", type=_share, default=1.0, metavar="FRACTION",
                   help="hankel-bt's penalty on this random fraction of the channels per step (default 1: all)")
    x.add_argument("--hankel-relative", action="store_true",
                   help="hankel-bt's penalty: the values beyond --hankel-order as a share of all of them, per "
                        "channel (needs --hankel-order)")
    x.add_argument("--hankel-horizon", choices=("auto", "finite"), default="auto",
                   help="hankel-bt's penalty: Gramians over an infinite horizon for stable layers (auto) or over "
                        "the sequence length (finite; train --hankel-horizon; default auto)")
    x.add_argument("--hankel-select-rank", type=_even_state_dim, default=None, metavar="r",
                   help="hankel-bt's pre-training chooses its best epoch (and stops early) by the validation "
                        "accuracy of the model after BT to order r, without retraining (train --select-rank; "
                        "default: by the N model's own)")
    x.add_argument("--out", required=True, metavar="DIR", help="experiment folder")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.add_argument("--report-only", action="store_true",
                   help="train and compress nothing: write results.json and report.md from the selected sub-runs "
                        "that are finished (the same settings as the folder's; seeds, ranks, kernels and methods "
                        "may differ), and list the selected ones that are not")
    x.add_argument("--include-results", action="append", metavar="RESULTS.json",
                   help="with --report-only: rows of an earlier results.json (beside its experiment.json, same "
                        "settings) stand in for selected sub-runs this folder does not hold; sub-runs in both are "
                        "taken from the folder and the report says whether their accuracies agree (repeatable)")
    _add_model_args(x)
    _add_train_args(x)
    for a in x._actions:
        if a.dest in ("init", "seed"):
            a.help = argparse.SUPPRESS
        if a.dest == "kernel":
            a.choices, a.type, a.default = None, _name_list(KERNELS, "kernels"), ["s4d"]
            a.metavar = "k1,k2,..."
            a.help = "DSS kernels, comma-separated, one report section each (default s4d)"
    x.set_defaults(epochs=60, patience=5)
    for a in x._actions:
        if a.dest == "epochs":
            a.help = "epoch cap of pre-training (default 60; with --patience the run stops when validation stops rising)"
        if a.dest == "patience":
            a.help = "early stopping patience in epochs, 0 = off (default 5)"
    x.set_defaults(func=cmd_experiment)

    s4 = sub.add_parser("import-s4", help="convert a state-spaces/s4 S4D checkpoint into a run folder",
                        description="Read the state dict of an S4D model built like state-spaces/s4 example.py "
                                    "(.safetensors, or .pt/.ckpt via torch.load(weights_only=True)) and write a run "
                                    "folder that evaluate, compress, train --init-from and export accept.")
    s4.add_argument("checkpoint", metavar="CHECKPOINT", help="the .safetensors, .pt or .ckpt file")
    s4.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    s4.add_argument("--prenorm", action="store_true",
                    help="the model was trained with example.py --prenorm (the state dict cannot tell; default postnorm)")
    s4.add_argument("--data", metavar="NAME|PATH",
                    help="record this data set in the run (and print the test accuracy), e.g. cifar10:DIR")
    s4.add_argument("--data-option", type=_data_option, action="append", metavar="KEY=VALUE", help="data set option")
    s4.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    s4.set_defaults(func=cmd_import_s4)

    m = sub.add_parser("demo", help="the demo that `make demo` runs",
                       description="The compression protocol on the built-in digits data at laptop size "
                                   "(N=64 -> r=16,4, one seed, every method and control): prints the accuracy table and writes a report.")
    m.add_argument("--out", default="demo_run", help="experiment folder (default demo_run)")
    m.add_argument("--epochs", type=_positive_int, default=8, help="epochs per training (default 8)")
    m.add_argument("--seeds", type=_seed_list, default=[0], help="seeds (default 1)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=cmd_demo)
    _add_export_parsers(sub)
    return p


# ----------------------------------------------------------------------------- export and stream (issue 10)

def _load_eval_model(run: str):
    from . import checkpoint as ckpt
    model, _ = ckpt.load_model(Path(run))
    return model.eval()


def cmd_export(args) -> int:
    from .export import StepWeights

    if args.int8 and args.format != "c":
        raise UserError("--int8 applies to --format c only; the ONNX graph keeps float32 weights.")
    model = _load_eval_model(args.run)
    weights = StepWeights.from_model(model)
    weight_bytes = 4 * weights.weight_count()
    out = Path(args.out)
    try:
        if args.format == "onnx":
            from .export.onnx_export import ExportDependencyError, export_onnx
            if out.is_dir():
                raise UserError(f"--out {out} is a folder; the ONNX export writes one file (e.g. {out / 'model.onnx'}).")
            try:
                export_onnx(weights, out)
            except ExportDependencyError as exc:
                raise UserError(str(exc)) from None
            written = [out]
        else:
            from .export.c_export import c_weight_bytes, write_c
            written = list(write_c(weights, out, args.name, int8=args.int8).values())
            weight_bytes = c_weight_bytes(weights, int8=args.int8)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc}); choose a writable --out.") from None
    info = {"format": args.format, "files": [str(p) for p in written], "state_dims": weights.state_dims,
            "weight_bytes": weight_bytes, "state_bytes_per_stream": 4 * weights.state_count()}
    if args.json:
        _print_json(info)
    else:
        print(f"exported {args.run} ({weights.kernel}, state dims {weights.state_dims}) as {args.format}: "
              + ", ".join(info["files"]))
        print(f"  weights {info['weight_bytes']} bytes, state {info['state_bytes_per_stream']} bytes per stream")
        if args.format == "c":
            print(f"  build the example driver: cc -std=c99 {'-O3' if args.int8 else '-O2'} -o {out / args.name}_driver "
                  f"{out / args.name}.c {out / args.name}_driver.c -lm")
    return 0


def cmd_stream(args) -> int:
    import contextlib
    import tempfile
    from .export.backends import open_backend
    from .export.stream_input import open_stream_input

    model = _load_eval_model(args.run)
    source = open_stream_input(args.input, model.d_input, model.vocab_size)
    live = args.input == "-"
    with tempfile.TemporaryDirectory(prefix="ssmcompress_stream_") as work:
        try:
            backend = open_backend(model, args.backend, source.batch, workdir=work)
        except ImportError as exc:  # onnx or onnxruntime missing
            raise UserError(str(exc)) from None
        print("step,sample," + ",".join(f"y{j}" for j in range(model.d_output)), flush=live)
        steps, y, printed = 0, None, -1
        try:
            for t, x_t in enumerate(source):
                y = backend.step(x_t)
                steps = t + 1
                if steps % args.every == 0:
                    _print_stream_rows(t, y, live)
                    printed = t
        except BaseException:
            with contextlib.suppress(Exception):
                backend.close()
            raise
        us = backend.close() if steps else 0.0
        if steps == 0:
            raise UserError(f"{args.input} holds no steps to stream.")
        if printed != steps - 1:
            _print_stream_rows(steps - 1, y, live)
    print(f"{steps} steps x {source.batch} stream(s) on {args.backend}: {us:.2f} us per token", file=sys.stderr)
    return 0


def _print_stream_rows(t, y, flush) -> None:
    for b, row in enumerate(y):
        print(f"{t},{b}," + ",".join(f"{float(v):.7g}" for v in row), flush=flush)


def _add_export_parsers(sub) -> None:
    ex = sub.add_parser("export", help="export the streaming step of a run as ONNX or as C99 source",
                        description="Export the eval-mode streaming step of a run folder (state in, state out): "
                                    "--format onnx writes one .onnx graph with dynamic batch (needs onnx: "
                                    "pip install 'ssmcompress[export]'); --format c writes NAME.h, NAME.c "
                                    "(weights as static const float, no heap, only libm) and an example driver NAME_driver.c.")
    ex.add_argument("run", metavar="RUN", help="run folder of the model")
    ex.add_argument("--format", choices=("onnx", "c"), required=True, help="onnx (one file) or c (a folder of sources)")
    ex.add_argument("--out", required=True, metavar="FILE|DIR", help="the .onnx file, or the folder of the C sources")
    ex.add_argument("--name", default="ssm_model", help="C: file and symbol prefix (default ssm_model)")
    ex.add_argument("--int8", action="store_true",
                    help="C: store the Linear weights as int8 with a float scale per output (SSM and norms stay float32)")
    ex.add_argument("--json", action="store_true", help="print one JSON object (files, weight and state bytes)")
    ex.set_defaults(func=cmd_export)

    st = sub.add_parser("stream", help="run a model token by token on a file or stdin and print every output",
                        description="Run the model of a run folder as a recurrence, one step at a time, and print its "
                                    "output after every step (CSV: step,sample,y0,...) and the microseconds per token "
                                    "(stderr). Input: .npy of shape (length,), (length, features), (batch, length) or "
                                    "(batch, length, features); a .csv/.txt file; or - for CSV lines on stdin, one step "
                                    "per line.")
    st.add_argument("run", metavar="RUN", help="run folder of the model")
    st.add_argument("--input", required=True, metavar="FILE|-", help=".npy, .csv or .txt file, or - for stdin")
    st.add_argument("--every", type=_positive_int, default=1, metavar="k",
                    help="print the output every k steps (and after the last one; default 1)")
    st.add_argument("--backend", choices=("torch", "onnx", "c"), default="torch",
                    help="eager torch (default), onnxruntime, or the C export built with the system cc")
    st.set_defaults(func=cmd_stream)


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
