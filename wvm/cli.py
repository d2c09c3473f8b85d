"""`wvm`: one console command, one sub-command per verb. Each verb lives in its own module and
registers its arguments here; `wvm <verb> --help` documents it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pipelines.errors import WvmError


def _datagen(args: argparse.Namespace) -> dict:
    from wvm.datagen import metaworld

    if args.tasks == "train":
        tasks = metaworld.training_tasks()
    elif args.tasks == "reserved":
        tasks = metaworld.RESERVED_TASKS
    else:
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
        unknown = set(tasks) - set(metaworld.all_tasks())
        if unknown:
            raise WvmError(f"unknown Meta-World task(s): {sorted(unknown)}")
        if reserved := set(tasks) & set(metaworld.RESERVED_TASKS):
            logging.warning("reserved task(s) %s: use them for evaluation only", sorted(reserved))
    per_kind = {
        "expert": args.expert,
        "hesitation": args.hesitation,
        "retry": args.retry,
        "failed": args.failed,
        "failed_detour": args.failed_detour,
    }
    if any(n < 0 for n in per_kind.values()) or not tasks or sum(per_kind.values()) == 0:
        raise WvmError(f"nothing to render: {len(tasks)} task(s), episodes per task {per_kind}")
    if os.path.lexists(args.out):  # a clear error instead of the writer's FileExistsError
        raise WvmError(f"{args.out} already exists: datagen writes a new dataset, choose another --out")
    cameras = tuple(dict.fromkeys(args.camera or ["corner"]))
    if unknown := [c for c in cameras if c not in metaworld.CAMERAS]:
        raise WvmError(f"unknown Meta-World camera(s) {unknown}: choose from {list(metaworld.CAMERAS)}")
    if not 0 <= args.camera_jitter <= 45:
        raise WvmError(f"--camera-jitter {args.camera_jitter}: expected degrees from 0 to 45")
    if args.camera_jitter and (on_arm := [c for c in cameras if c in metaworld.ARM_CAMERAS]):
        raise WvmError(f"--camera-jitter moves cameras fixed in the scene; {on_arm} ride on the arm")
    if args.waypoints < 0:
        raise WvmError(f"--waypoints {args.waypoints}: expected 0 (the tasks' own experts) or a number of points")
    if not 0 < args.waypoint_min_speed <= 1:
        raise WvmError(f"--waypoint-min-speed {args.waypoint_min_speed}: expected a fraction of the full pace in (0, 1]")
    config = metaworld.DatagenConfig(
        out=args.out,
        tasks=tasks,
        per_kind=per_kind,
        seed=args.seed,
        size=args.size,
        cameras=cameras,
        camera_jitter=args.camera_jitter,
        fps=args.fps,
        workers=args.workers,
        placement_seed=args.placement_seed,
        waypoints=args.waypoints,
        waypoint_min_speed=args.waypoint_min_speed,
    )
    return metaworld.generate(config)


def _add_datagen(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datagen", help="generate simulated datasets with ground-truth progress")
    datagen_sub = p.add_subparsers(dest="simulator", required=True)
    mw = datagen_sub.add_parser(
        "metaworld",
        help="Meta-World expert / hesitation / retry / failed episodes as a LeRobot v3 dataset",
        description="Render Meta-World episodes (expert, hesitation, retry, failed) into a LeRobot v3.0 dataset at OUT "
        "and their ground-truth progress into OUT.labels.parquet.",
    )
    mw.add_argument("--out", required=True, help="output dataset directory (must not exist)")
    mw.add_argument(
        "--tasks",
        default="train",
        help="'train' (the 35 training tasks), 'reserved' (the 15 held-out tasks) or a comma list of env names",
    )
    mw.add_argument("--expert", type=int, default=2, help="expert episodes per task")
    mw.add_argument("--hesitation", type=int, default=2, help="hesitation episodes per task")
    mw.add_argument("--retry", type=int, default=2, help="retry episodes per task")
    mw.add_argument("--failed", type=int, default=0, help="failed episodes per task (the task is never completed)")
    mw.add_argument(
        "--failed-detour",
        type=int,
        default=0,
        help="failed episodes per task that first pause or undo part of their work, then stop (labelled failed)",
    )
    mw.add_argument("--seed", type=int, default=0, help="the same seed renders the same episodes and scenes again")
    mw.add_argument(
        "--placement-seed",
        type=int,
        default=None,
        help="seed of Meta-World's object/goal placement pool (task i gets this + i); default 100 * --seed",
    )
    mw.add_argument("--size", type=int, default=128, help="square image size in pixels")
    mw.add_argument(
        "--camera",
        action="append",
        default=None,
        help="Meta-World camera to render, repeatable: every frame from each (default corner; "
        "others: corner2, corner3, corner4, topview, behindGripper, gripperPOV)",
    )
    mw.add_argument(
        "--camera-jitter",
        type=float,
        default=0.0,
        metavar="DEG",
        help="a new viewpoint per episode: cameras orbit what they look at by up to DEG degrees in azimuth "
        "(DEG/2 in elevation) and move up to DEG %% closer or farther (default 0: the named cameras as they are)",
    )
    mw.add_argument(
        "--waypoints",
        type=int,
        default=0,
        metavar="N",
        help="replace each task by a new one per episode in the task's scene: the hand visits N random points "
        "in turn (labels name it waypoints-<task>); default 0: the task's own scripted expert",
    )
    mw.add_argument(
        "--waypoint-min-speed",
        type=float,
        default=1.0,
        metavar="S",
        help="with --waypoints: each leg moves at a fraction of the full pace drawn from [S, 1], so slow motion is "
        "work too (default 1: every leg at full pace)",
    )
    mw.add_argument("--fps", type=int, default=20, help="frame rate written to the dataset")
    mw.add_argument("--workers", type=int, default=1, help="parallel render processes")
    mw.set_defaults(run=_datagen)


def _engine(args: argparse.Namespace):
    """The engine chosen by --engine / --workers / --scheduler / --beam-option."""
    if args.engine == "dask":
        from pipelines.engines.dask import DaskEngine

        return DaskEngine(address=args.scheduler, workers=args.workers)
    if args.engine == "beam":
        from pipelines.engines.beam import BeamEngine

        return BeamEngine(workers=args.workers, options=args.beam_option)
    from pipelines.engines.base import LocalEngine

    return LocalEngine()


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("dask", "beam", "local"), default="dask", help="execution engine (default: dask)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (Dask LocalCluster / Beam DirectRunner)")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler (default: start a LocalCluster)")
    p.add_argument(
        "--beam-option",
        action="append",
        default=[],
        metavar="OPT",
        help="Beam pipeline option, repeatable (e.g. --beam-option=--runner=DataflowRunner)",
    )


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from None
    return h, w


def _ingest(args: argparse.Namespace) -> dict:
    from pipelines.ingest import IngestConfig, run_ingest
    from pipelines.stages.ingest import DecodeOptions

    config = IngestConfig(
        source=args.src,
        store=args.out,
        decode=DecodeOptions(
            cameras=tuple(args.camera),
            resize=args.resize,
            max_side=args.max_side,
            tolerance_s=args.tolerance_s,
            threads=args.decode_threads,
        ),
        partition_frames=args.partition_frames,
        on_error=args.on_error,
    )
    with _engine(args) as engine:
        return run_ingest(config, engine).as_dict()


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="decode a robot dataset (LeRobot, RLDS / Open X-Embodiment, raw folders) into the canonical episode store",
        description="Decode every episode of a dataset (local path or URL such as gs://) into the canonical Zarr "
        "episode store at OUT. Formats: LeRobot v2.0/v2.1/v3.0, RLDS / Open X-Embodiment TFDS builder directories, "
        "raw episode folders (pipelines/sources/raw.py). Frames are stored with their longer side at most --max-side "
        "pixels (default 128, aspect kept). Reruns skip episodes already stored with the same fingerprint; an "
        "interrupted run resumes where it stopped.",
    )
    p.add_argument("src", help="dataset: local path or fsspec URL")
    p.add_argument("--out", required=True, help="episode store: local path or fsspec URL")
    p.add_argument("--camera", action="append", default=[], help="camera key to keep, repeatable (default: all)")
    p.add_argument("--resize", type=_size, default=None, metavar="HxW", help="store frames at exactly this size, e.g. 96x128")
    p.add_argument("--max-side", type=int, default=128, metavar="PX", help="store frames with the longer side at most PX (aspect kept); 0: full resolution")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="bad episode: stop, or record it in failures.parquet and go on")
    p.add_argument("--partition-frames", type=int, default=1000, help="frames per partition, the unit of work and commit")
    p.add_argument("--tolerance-s", type=float, default=1e-4, help="max distance between a frame timestamp and its video frame")
    p.add_argument("--decode-threads", type=int, default=1, help="decoder threads per worker")
    _add_engine_args(p)
    p.set_defaults(run=_ingest)


def _train(args: argparse.Namespace) -> dict:
    from wvm.train import TrainConfig, Trainer, train

    config = TrainConfig.from_file(args.config)
    for key in ("seed", "device", "precision", "steps", "ae_steps", "threads", "init_autoencoder", "init_from"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    final = Trainer(config, args.out).refit_ood(args.refit_ood) if args.refit_ood else train(config, args.out)
    return {"checkpoint": str(final), "log": str(Path(args.out) / "log.jsonl")}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the value model (autoencoder, then the two streams)",
        description="Train from episode stores listed in a JSON config (see configs/). Checkpoints go to "
        "OUT/checkpoints/latest every few hundred steps; rerunning the same command resumes from there. "
        "The finished checkpoint is OUT/final (model.safetensors + config.json).",
    )
    p.add_argument("--config", required=True, help="training config JSON")
    p.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    p.add_argument("--steps", type=int, default=None, help="value-model steps (overrides the config)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps (overrides the config)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--init-autoencoder", default=None, help="take the frozen encoder from this checkpoint, skip its training")
    p.add_argument("--init-from", default=None, help="start from all weights of this checkpoint (stage 2 from a stage-1 run)")
    p.add_argument(
        "--refit-ood",
        metavar="CHECKPOINT",
        default=None,
        help="train nothing: give this trained checkpoint the latent OOD score, fit on the config's data as training "
        "fits it (same seed), into OUT/final; for checkpoints trained before ood_score 'latent'",
    )
    p.set_defaults(run=_train)


def _ensemble(args: argparse.Namespace) -> dict:
    from wvm.checkpoint import save_ensemble

    checkpoint_hash = save_ensemble(args.member, args.out, args.version)
    return {"checkpoint": args.out, "version": args.version, "members": len(args.member), "hash": checkpoint_hash}


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine models of one recipe trained with different seeds into one checkpoint",
        description="Write one checkpoint at OUT holding every --member (stage-2 runs of one config with "
        "different --seed from the same stage 1, so one frozen encoder): frames are encoded once, each member "
        "labels the episode and their values are averaged. Members with different configs or encoders are an error.",
    )
    p.add_argument("--member", action="append", required=True, help="a member checkpoint directory (e.g. RUN/final), repeatable, two or more")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--version", required=True, help="model version the labels will carry, e.g. wvm-small-mw35-v11")
    p.set_defaults(run=_ensemble)


def _eval(args: argparse.Namespace) -> dict:
    from wvm.evaluate import RAMP, evaluate, load_bench
    from wvm.handlers import LocalHandler

    models = dict(spec.partition("=")[::2] for spec in args.model or [f"WVM={args.checkpoint or ''}"])  # name -> checkpoint
    groups = {}
    for spec in args.group or []:
        name, _, members = spec.partition("=")
        members = [m for m in members.split(",") if m]
        if not name or len(members) < 2 or len(set(members)) < len(members):
            raise WvmError(f"--group expects NAME=MODEL,MODEL[,...] (two or more different --model names), got {spec!r}")
        if unknown := [m for m in members if m not in models]:
            raise WvmError(f"--group {name}: {unknown} not among the --model names {list(models)}")
        groups[name] = members
    if unknown := [m for m in args.video_only or [] if m not in models]:
        raise WvmError(f"--video-only {unknown}: not among the --model names {list(models)}")
    benches = {}
    for spec in args.bench:
        name, _, rest = spec.partition("=")
        dataset, labels, camera, *extra = [*rest.split(","), "", ""]
        if not dataset or any(extra):
            raise WvmError(f"--bench expects NAME=DATASET[,LABELS[,CAMERA]], got {spec!r}")
        benches[name] = load_bench(dataset, labels or None, camera or None)
    handlers = {RAMP: None}
    for name, path in models.items():
        handler = LocalHandler(path or None, threads=args.threads)
        handler.load()
        handlers[name] = handler
    return evaluate(benches, handlers, args.out, groups, set(args.video_only or []))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score models against ground-truth progress (Expert-VOC, Hesitation-RMSE, Retry-VOC, Failure-AUROC)",
        description="Evaluate one or more checkpoints and the time-ramp baseline on benchmark datasets "
        "(LeRobot datasets with a NAME.labels.parquet ground-truth file beside them). Writes report.md, "
        "metrics.json and per-task plot grids (plots/) into OUT.",
    )
    p.add_argument(
        "--bench",
        action="append",
        required=True,
        metavar="NAME=DATASET[,LABELS[,CAMERA]]",
        help="repeatable; LABELS 'expert' marks a dataset of successful demonstrations without labels (Expert-VOC only), "
        "empty for the labels file beside the dataset; CAMERA: the camera key to score (default: the first third-person one)",
    )
    p.add_argument("--model", action="append", metavar="NAME=CHECKPOINT", help="repeatable; default: the shipped model")
    p.add_argument("--checkpoint", default=None, help="shorthand for a single --model WVM=CHECKPOINT")
    p.add_argument(
        "--group",
        action="append",
        metavar="NAME=MODEL,MODEL[,...]",
        help="repeatable; reports these --model names (seeds of one recipe) as mean [min, max] beside their own rows",
    )
    p.add_argument(
        "--video-only",
        action="append",
        metavar="NAME",
        help="repeatable; score this --model from the frames alone, as if the benches recorded no robot state",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: all cores; set it beside a running training)"
    )
    p.add_argument("--out", required=True, help="report directory")
    p.set_defaults(run=_eval)


def _serve(args: argparse.Namespace) -> None:
    import signal
    import threading

    from wvm.serving.server import DEFAULT_REPOSITORY, TritonServer, write_repository

    repository = Path(args.model_repository) if args.model_repository else DEFAULT_REPOSITORY
    if args.checkpoint:
        repository = write_repository(args.checkpoint, repository)
    server = TritonServer(
        model_repository=repository,
        host=args.host,
        die_with_parent=True,  # a kill -9 of `wvm serve` takes the server with it
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        config_name=args.config_name,
        log_file=Path(args.log_file) if args.log_file else None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"starting tritonserver on {repository} ...", file=sys.stderr)
    with server:
        print(json.dumps({"ready": True, **server.endpoints}), flush=True)
        print("serving; Ctrl-C to stop", file=sys.stderr)
        try:
            while not stop.is_set() and server.process.poll() is None:
                stop.wait(1.0)
        except KeyboardInterrupt:
            pass
        if server.process.poll() is not None:
            raise WvmError(f"tritonserver exited with code {server.process.returncode}")
        print("stopping (in-flight requests finish first) ...", file=sys.stderr)
    return None


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run a local Triton Inference Server with the model",
        description="Start the tritonserver bundled in the nvidia-pytriton wheel on the project's model repository, "
        "wait until the model is ready, print the endpoints, serve until Ctrl-C.",
    )
    p.add_argument("--model-repository", default=None, help="Triton model repository (default: model_repository/)")
    p.add_argument("--checkpoint", default=None, help="serve this checkpoint instead of the one config.pbtxt names")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, e.g. in a container)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--config-name", default=None, help="model config variant, e.g. gpu (model_repository/wvm/configs/gpu.pbtxt)")
    p.add_argument("--log-file", default=None, help="write the server log here")
    p.set_defaults(run=_serve)


def _model_spec(args: argparse.Namespace):
    from pipelines.inference import ModelSpec

    return ModelSpec(
        backend=args.backend,
        checkpoint=args.checkpoint,
        triton_url=args.triton_url,
        expected_version=args.model_version,
        device=args.device,
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "triton"), default="local", help="run the model in-process or on Triton")
    p.add_argument("--checkpoint", default=None, help="local backend: checkpoint directory (default: the shipped model)")
    p.add_argument("--triton-url", default="127.0.0.1:8001", help="triton backend: HOST:GRPC_PORT")
    p.add_argument("--model-version", default=None, help="triton backend: fail unless the server runs this version")
    p.add_argument("--device", default="cpu", help="local backend: torch device")


def _relabel(args: argparse.Namespace) -> dict:
    from pipelines.relabel import RelabelConfig, run_relabel

    config = RelabelConfig(
        source=args.src,
        dst=args.out,
        model=_model_spec(args),
        camera=next((c for c in args.camera if "=" not in c), None),
        camera_by_embodiment=tuple(tuple(c.split("=", 1)) for c in args.camera if "=" in c),
        partition_frames=args.partition_frames,
        on_error=args.on_error,
        advantage_horizon=args.horizon,
        publish=not args.no_publish,
    )
    with _engine(args) as engine:
        return run_relabel(config, engine).as_dict()


def _add_relabel(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "relabel",
        help="label every frame of a dataset with task progress, advantages and sample weights",
        description="Label SRC (any dataset `wvm ingest` reads, or an episode store; local or URL) with the value "
        "model and write per-frame progress (Zarr + frames.parquet), advantages and weights, per-episode quality "
        "(episodes.parquet) and LeRobot's RA-BC sidecar (wvm_progress.parquet) into OUT/versions/<model>/. "
        "Reruns label only what is new; another model version writes beside, never over.",
    )
    p.add_argument("src", help="dataset or episode store")
    p.add_argument("--out", required=True, help="labels directory (local or URL)")
    _add_model_args(p)
    p.add_argument(
        "--camera",
        action="append",
        default=[],
        metavar="[EMBODIMENT=]KEY",
        help="camera the model looks at, for every episode or (repeatable) per embodiment; default: the first "
        "third-person camera. The choice is recorded per episode in episodes.parquet",
    )
    p.add_argument("--horizon", type=int, default=10, help="action horizon H of the chunk advantage")
    p.add_argument("--partition-frames", type=int, default=2000, help="frames per partition")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail")
    p.add_argument("--no-publish", action="store_true", help="do not update OUT/latest.json and OUT/wvm_progress.parquet")
    _add_engine_args(p)
    p.set_defaults(run=_relabel)


def _prefect_defaults() -> None:
    """Quiet, offline-friendly Prefect settings unless the user chose otherwise."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _nightly(args: argparse.Namespace) -> dict:
    import contextlib

    _prefect_defaults()
    if args.scheduler:
        os.environ["WVM_DASK_ADDRESS"] = args.scheduler
    os.environ["WVM_DASK_WORKERS"] = str(args.workers)
    from flows.nightly import nightly_flow
    from flows.runtime import local_prefect_server

    with contextlib.ExitStack() as stack:
        if not os.environ.get("PREFECT_API_URL"):
            print("starting a temporary local Prefect server ...", file=sys.stderr)
            stack.enter_context(local_prefect_server())
        backend, triton_url = args.backend, args.triton_url
        if args.serve:
            from wvm.serving.server import DEFAULT_REPOSITORY, TritonServer, free_port, write_repository

            repository = write_repository(args.checkpoint) if args.checkpoint else DEFAULT_REPOSITORY
            # die_with_parent: the server runs in a session of its own, so a kill -9 of this run
            # would leave it up as an orphan on its ports; started from the main thread, which
            # lives as long as the run
            server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), die_with_parent=True)
            print(f"starting tritonserver ({repository}) ...", file=sys.stderr)
            stack.enter_context(server)
            backend, triton_url = "triton", server.grpc_url
            print(f"Triton ready: {json.dumps(server.endpoints)}", file=sys.stderr)
        return nightly_flow(
            sources=args.src,
            out=args.out,
            backend=backend,
            triton_url=triton_url,
            checkpoint=args.checkpoint,
            on_error=args.on_error,
            partition_frames=args.partition_frames,
        )


def _add_nightly(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nightly",
        help="run the nightly flow once: ingest and label what is new, QC report, publish",
        description="Run the Prefect nightly flow once over SRC datasets into OUT: ingest new or changed episodes, "
        "label what the model has not labelled, build the QC report and publish OUT/latest.json. Uses PREFECT_API_URL "
        "when set, else a temporary local Prefect server.",
    )
    p.add_argument("src", nargs="+", help="LeRobot datasets (paths or URLs)")
    p.add_argument("--out", required=True, help="output root: stores/, labels/, reports/, latest.json")
    _add_model_args(p)
    p.add_argument("--serve", action="store_true", help="start a local Triton server with the model for this run (implies --backend triton)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="skip")
    p.add_argument("--partition-frames", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="local Dask workers")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    p.set_defaults(run=_nightly)


def _report(args: argparse.Namespace) -> dict:
    from pipelines.report import LabelsSource, build_report

    sources = [LabelsSource(Path(d.rstrip("/")).name, d) for d in args.labels]
    return build_report(sources, args.out)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="build the QC report (HTML + plots) of labels directories")
    p.add_argument("labels", nargs="+", help="labels directories written by wvm relabel")
    p.add_argument("--out", required=True, help="report directory")
    p.set_defaults(run=_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wvm",
        description="World Value Model pipeline: ingest robot datasets, label every frame with task progress.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_ingest(sub)
    _add_relabel(sub)
    _add_nightly(sub)
    _add_report(sub)
    _add_train(sub)
    _add_ensemble(sub)
    _add_eval(sub)
    _add_serve(sub)
    _add_datagen(sub)
    __import__("wvm.policy.cli", fromlist=["add_parser"]).add_parser(sub)  # wvm policy-bench (issue #11)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # engines log every worker start and stop at INFO
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed is imported
        for name in ("distributed", "apache_beam", "prefect", "httpx", "sentence_transformers", "matplotlib"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        summary = args.run(args)
    except WvmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
