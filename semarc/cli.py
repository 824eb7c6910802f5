"""The ``semarc`` command line.

Exit status (encode and decode):
  0  every input was encoded (every record decoded)
  3  the job finished, but some records are error rows (see ``semarc inspect``
     or DST/errors.jsonl)
  1  the job itself failed (bad SRC or DST, a manifest error, a crash)
  2  bad command-line usage
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_ROWS = 0, 1, 2, 3


def _storage_options(args) -> dict:
    return json.loads(args.storage_options) if getattr(args, "storage_options", None) else {}


def add_options(p: argparse.ArgumentParser, cls) -> None:
    """One flag per field of a job's options dataclass (``jobs/options.py``):
    ``--caption-batch`` for ``caption_batch``, ``--no-progress`` for a field
    that defaults to True, the help, choices and argument group from the
    field's metadata, so that a flag and an option cannot drift apart."""
    import dataclasses

    from semarc.jobs.options import GROUPS, ordered_fields

    groups: dict = {}
    for f in ordered_fields(cls):
        md = f.metadata
        if not md.get("cli", True):
            continue
        g = md.get("group")
        if g is not None and g not in groups:
            groups[g] = p.add_argument_group(*GROUPS[g])
        target = groups[g] if g is not None else p
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        helptext = md.get("help", "")
        if isinstance(default, bool):
            if default:
                target.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=md.get("cli_help") or f"{f.name}=False: not ({helptext})")
            else:
                target.add_argument(flag, dest=f.name, action="store_true", help=helptext)
            continue
        kind = md.get("parse") or {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        if default not in (None, {}, []) and "default" not in helptext:
            helptext += f" (default: {default})"
        target.add_argument(flag, dest=f.name, type=kind, choices=md.get("choices"), metavar=md.get("metavar"),
                            default=None if md.get("parse") else default, help=helptext)


def options_from_args(cls, args):
    """A job's options from parsed arguments (``add_options``): every field
    with a flag; a flag not given keeps the field's default."""
    import dataclasses

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
          if f.metadata.get("cli", True) and getattr(args, f.name, None) is not None}
    return cls(**kw)


def _add_cli_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", default=None, metavar="FILE",
                   help="also write the final report (counts, totals, per-stage busy time) as JSON to this local file")


def encode_options(args):
    from semarc.jobs.options import EncodeOptions

    return options_from_args(EncodeOptions, args)


def decode_options(args):
    from semarc.jobs.options import DecodeOptions

    return options_from_args(DecodeOptions, args)


def _stage_lines(stages: dict) -> list[str]:
    """The pools' busy time (``workers.meter``): the stage with the highest
    utilisation bounds the job; docs/cluster.md says how to balance them."""
    out = []
    for name, s in stages.items():
        if not s["actors"]:
            continue
        each = f", {s['s_per_item']:.4f} s per item" if s["s_per_item"] else ""
        out.append(f"  {name}: {s['actors']} actor{'s' if s['actors'] != 1 else ''}, {s['busy_s']:.1f} s busy "
                   f"({s['utilisation']:.0%} of the pool's time), {s['items']} items{each}")
    return out


def _report(args, report) -> None:
    """After a job's summary line: one line per pool, and ``--report FILE``."""
    print("\n".join(_stage_lines(report.stages)), end="\n" if report.stages else "", flush=True)
    if args.report:
        import dataclasses

        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({"command": args.cmd, "src": args.src, "dst": args.dst, **dataclasses.asdict(report)}, f,
                      indent=1, sort_keys=True)
            f.write("\n")


def cmd_encode(args) -> int:
    from semarc.jobs.encode import run_encode

    r = run_encode(args.src, args.dst, encode_options(args))
    t = r.totals
    print(f"semarc encode: {r.records} records in {r.shards} shards ({r.shards_skipped} already done): "
          f"{r.ok} ok, {r.errors} errors; {t['bytes_total']} bytes "
          f"(caption {t['bytes_caption']}, image {t['bytes_image']}) for {t['pixels']} pixels = "
          f"{(t['bpp'] or 0):.5f} bpp; {r.seconds:.1f} s", flush=True)
    _report(args, r)
    if r.errors:
        print(f"semarc encode: {r.errors} error rows; list them with: semarc inspect {args.dst} --errors",
              file=sys.stderr)
    return r.exit_code


def cmd_decode(args) -> int:
    from semarc.jobs.decode import run_decode

    r = run_decode(args.src, args.dst, decode_options(args))
    print(f"semarc decode: {r.decoded} records decoded, {r.errors} failed, {r.skipped_error_rows} error rows "
          f"skipped; {r.shards} shards ({r.shards_skipped} already done); {r.seconds:.1f} s", flush=True)
    _report(args, r)
    return r.exit_code


def cmd_inspect(args) -> int:
    from semarc.jobs.inspect import format_table, inspect

    r = inspect(args.path, _storage_options(args))
    if args.errors:
        import fsspec

        from semarc.jobs.shards import list_shards, read_shard

        fs, root = fsspec.core.url_to_fs(args.path, **_storage_options(args))
        for p in list_shards(fs, root.rstrip("/")):
            t, _ = read_shard(fs, p, columns=["key", "status", "error"])
            for row in t.to_pylist():
                if row["status"] != "ok":
                    print(json.dumps({"key": row["key"], "error": row["error"]}, ensure_ascii=False))
        return EXIT_OK
    print(json.dumps(r, indent=1) if args.json else format_table(r))
    return EXIT_OK


def cmd_codecs(args) -> int:
    from semarc.codec import zoo

    if args.json:
        print(json.dumps([e.as_json(zoo.DEFAULT) for e in zoo.ZOO] + [m.as_json() for m in zoo.MODE_SETS], indent=1))
    else:
        print(zoo.table())
    return EXIT_OK


def cmd_sample(args) -> int:
    from semarc.jobs.sample import write_sample

    print(write_sample(args.dir))
    return EXIT_OK


def cmd_corpus(args) -> int:
    from semarc.train import corpus

    return corpus.main(args)


def cmd_train_eval(args) -> int:
    from semarc.train import evaluate

    return evaluate.main(args)


def cmd_train_codec(args) -> int:
    from semarc.train import trainer as train

    args.command_line = "semarc " + " ".join(sys.argv[1:])
    train.train(args)
    return EXIT_OK


def cmd_bench(args) -> int:
    args.command_line = "semarc " + " ".join(sys.argv[1:])
    if args.out is None and not (args.what == "crossdevice" and args.prepare) and \
            not (args.what == "fuzz" and args.replay):
        raise SystemExit("semarc bench: --out is required")
    if args.what == "captions":
        from semarc.bench import captions

        captions.run(args.out, shared=args.shared, n_coco=args.n_coco, threads=args.threads, batch=args.batch)
        return EXIT_OK
    if args.what == "captioner":
        from semarc.bench import captioner

        captioner.run(args.out, shared=args.shared, models=args.model, batch=args.batch if args.batch != 64 else 8,
                      threads=args.threads, max_tokens=args.max_tokens)
        return EXIT_OK
    if args.what == "pipeline":
        from semarc.bench import pipeline

        pipeline.run(args.out, sizes=[int(x) for x in args.sizes.split(",")], crop=args.crop,
                     num_cpus=args.num_cpus or 2, shared=args.shared, caption_every=args.caption_every)
        return EXIT_OK
    if args.what == "coco-roundtrip":
        from semarc.bench import coco_roundtrip

        r = coco_roundtrip.run(args.out, shared=args.shared, batch=args.batch, decode_batch=args.decode_batch,
                               threads=args.threads, limit=args.limit)
        print(json.dumps({k: v for k, v in r.items() if k != "profile"}, indent=1))
        return EXIT_OK if r["complete"] and not r["failures"] else EXIT_ERROR_ROWS
    if args.what == "kodak":
        from semarc.bench import kodak

        kodak.run(args.out, shared=args.shared, threads=args.threads,
                  baselines=args.baselines.split(",") if args.baselines else None,
                  points=args.points.split(",") if args.points else None, images_dir=args.images,
                  which=tuple(args.metrics.split(",")) if args.metrics else kodak.METRICS,
                  captions=args.captions, speed_reps=args.speed_reps, corpus=args.corpus, max_side=args.max_side,
                  latent_steps=tuple(int(v) for v in args.latent_steps.split(",")), latent_loss=args.latent_loss,
                  only=args.only.split(",") if args.only else None, command=args.command_line)
        return EXIT_OK
    if args.what == "generalisation":
        from semarc.bench import generalisation

        generalisation.run(args.out, args.results.split(",") if args.results else [],
                           points=args.points.split(",") if args.points else None, draws=args.draws,
                           seed=args.seed, command=args.command_line)
        return EXIT_OK
    if args.what == "fuzz":
        from semarc.bench import fuzz

        if args.replay:
            print(json.dumps(fuzz.replay(args.replay, args.seed)))
            return EXIT_OK
        rep = fuzz.run(args.out, fuzz.parse_cases(args.cases), seed=args.seed, mem_mb=args.memory_mb,
                       timeout=args.case_timeout, command=args.command_line)
        print(fuzz.markdown(rep))
        bad = sum(r["outcomes"][o] for r in rep["targets"].values() for o in ("other", "crash", "timeout", "oom"))
        return EXIT_ERROR_ROWS if bad else EXIT_OK
    if args.what == "read":
        from semarc.bench import read

        r = read.run(args.out, records=args.records, crop=args.crop, num_cpus=args.num_cpus or 2,
                     shard_size=args.shard_size, repeats=args.repeats, codec=args.codec, shared=args.shared,
                     command_line=args.command_line)
        return EXIT_OK if r["complete"] and r["read_matches_job"] else EXIT_ERROR_ROWS
    if args.what == "crossdevice":
        from semarc.bench import crossdevice

        if args.prepare:
            crossdevice.prepare(args.prepare, shared=args.shared)
        elif args.against:
            rep = crossdevice.compare(args.inputs, args.against, args.out)
            print(crossdevice.markdown(rep))
        else:
            crossdevice.encode_side(args.inputs, args.device, args.out,
                                    points=args.points.split(",") if args.points else None,
                                    captions=not args.images_only)
        return EXIT_OK
    if args.what in ("search-layout", "search-schedule"):
        from semarc.bench import search_variants

        steps = [int(v) for v in args.latent_steps.split(",")]
        if len(steps) != 1 or not args.points or "," in args.points:
            raise SystemExit(f"semarc bench {args.what}: one --points and one --latent-steps count")
        if args.what == "search-schedule":
            if not args.schedules:
                raise SystemExit("semarc bench search-schedule: give --schedules SCHEDULE:PEAK,SCHEDULE:PEAK")
            variants = search_variants.schedules(args.schedules)
        elif args.schedules:
            raise SystemExit("--schedules is an option of search-schedule")
        else:
            variants = search_variants.LAYOUTS
        search_variants.run(args.out, args.points, steps[0], variants, args.what.replace("-", "_"),
                            threads=args.threads, shared=args.shared, corpus=args.corpus, max_side=args.max_side,
                            images_dir=args.images, only=args.only.split(",") if args.only else None,
                            command=args.command_line)
        return EXIT_OK
    raise SystemExit(f"unknown benchmark {args.what!r}")


def build_parser() -> argparse.ArgumentParser:
    from semarc import __version__

    p = argparse.ArgumentParser(prog="semarc", description="Ultra-low-bitrate semantic image archiving.",
                                epilog="exit status: 0 ok; 3 finished with error rows; 1 job failed; 2 usage")
    p.add_argument("--version", action="version", version=f"semarc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    from semarc.jobs.options import DecodeOptions, EncodeOptions

    e = sub.add_parser("encode", help="images (folder, glob or manifest) -> Parquet shards under DST",
                       description="Encode images into Parquet shards; the options are those of semarc.encode().")
    e.add_argument("src", help="a folder, a glob, or a .jsonl/.csv/.parquet manifest (uri, optional caption, key)")
    e.add_argument("dst", help="the archive: a folder or any fsspec URL")
    add_options(e, EncodeOptions)
    _add_cli_only(e)
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="Parquet shards -> DST/images/<key>.png and DST/captions.jsonl",
                       description="Decode an archive to image files and captions.jsonl; the options are those of "
                                   "semarc.decode().")
    d.add_argument("src", help="the archive: a folder or any fsspec URL")
    d.add_argument("dst", help="the output folder or fsspec URL")
    add_options(d, DecodeOptions)
    _add_cli_only(d)
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("inspect", help="per-shard and total figures of an encode output")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.add_argument("--errors", action="store_true", help="list the error rows (key, reason) as JSON lines")
    i.add_argument("--storage-options", default=None)
    i.set_defaults(func=cmd_inspect)

    c = sub.add_parser("codecs", help="the image codec zoo: rate points, Kodak figures, speed, recipes")
    c.add_argument("--json", action="store_true", help="a JSON list of the points instead of the table")
    c.set_defaults(func=cmd_codecs)

    s = sub.add_parser("sample", help="write the bundled sample photos and manifest to DIR")
    s.add_argument("dir")
    s.set_defaults(func=cmd_sample)

    b = sub.add_parser("bench", help="benchmarks against baselines, same run, same inputs")
    b.add_argument("what", choices=["captions", "coco-roundtrip", "kodak", "captioner", "pipeline",
                                          "crossdevice", "fuzz", "read", "search-layout", "search-schedule",
                                          "generalisation"])
    b.add_argument("--out", default=None, help="output folder (required, except for crossdevice --prepare); kodak and coco-roundtrip: a stopped run resumes from its progress file there when the same command is run again")
    b.add_argument("--shared", default="../shared/data", help="folder of the shared evaluation data")
    b.add_argument("--images", default=None, metavar="DIR",
                   help="kodak, search-layout, search-schedule: every image of this folder instead of Kodak (e.g. a corpus's held-out images)")
    b.add_argument("--metrics", default=None,
                   help="kodak: comma-separated, psnr and lpips always, of psnr,ms_ssim,lpips,lpips_vgg,dists "
                        "(default: all)")
    b.add_argument("--n-coco", type=int, default=500)
    b.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    b.add_argument("--batch", type=int, default=64,
                   help="captions per batch, for semarc and float32 scoring (captioner: images per batch, default 8)")
    b.add_argument("--decode-batch", type=int, default=48, help="coco-roundtrip: decode batch size")
    b.add_argument("--limit", type=int, default=None, help="coco-roundtrip: only the first N captions")
    b.add_argument("--model", action="append", default=None,
                   help="captioner: a captioning model to measure (repeatable; default: two random models built here)")
    b.add_argument("--max-tokens", type=int, default=32, help="captioner: most new tokens per caption")
    b.add_argument("--baselines", default=None,
                   help="kodak: comma-separated classical codecs (default: avif,avif-ds2,heif,webp,jpeg,jxl), "
                        "or none")
    b.add_argument("--captions", default=None, metavar="FILE",
                   help="kodak: the images' captions for text-guided points (CSV image,caption or JSONL key,caption; "
                        "default for Kodak: SHARED/kodak_captions.csv)")
    b.add_argument("--corpus", default=None, metavar="DIR",
                   help="kodak, search-layout, search-schedule: the validation split of the corpus `semarc corpus DIR` built, instead of Kodak")
    b.add_argument("--max-side", type=int, default=None,
                   help="kodak, search-layout, search-schedule --corpus: downscale images whose long side is larger to this (Lanczos)")
    b.add_argument("--speed-reps", type=int, default=3,
                   help="kodak: rounds of the speed measurement, best of them (default 3; 0: none)")
    b.add_argument("--points", default=None,
                   help="kodak, crossdevice, search-layout and search-schedule (one): comma-separated image codecs: zoo names, checkpoint ids or checkpoint "
                        "paths (default: the zoo's checkpoints)")
    b.add_argument("--latent-steps", default="0", metavar="N[,N...]",
                   help="kodak: measure each point at each of these latent-search step counts (0: the plain "
                        "encoder; e.g. 0,30 gives both, side by side); search-layout, search-schedule: one count > 0")
    b.add_argument("--schedules", default=None, metavar="SCHEDULE:PEAK,...",
                   help="search-schedule: the latent search's step schedules to compare, e.g. "
                        "constant:0.003,cosine:0.007 (schedules: cosine, the encoder's, and constant)")
    b.add_argument("--latent-loss", default=None, metavar="LAMBDA[,LPIPS]",
                   help="kodak: the loss the latent search minimises (default: each point's training loss)")
    b.add_argument("--results", default=None, metavar="A,B",
                   help="generalisation: two `semarc bench kodak` results (kodak.json or its folder), e.g. the "
                        "validation split's and Kodak's; --points names the point in each when they hold several")
    b.add_argument("--draws", type=int, default=10000,
                   help="generalisation: bootstrap draws of each interval (default 10000; --seed seeds them)")
    b.add_argument("--only", default=None, metavar="NAME[,NAME...]",
                   help="kodak, search-layout, search-schedule: only these images of the set (Kodak's kodimNN, a folder's stems, a split's "
                        "SOURCE/NAME)")
    b.add_argument("--sizes", default="1000,10000", help="pipeline: comma-separated input counts")
    b.add_argument("--crop", type=int, default=128, help="pipeline, read: input image side in pixels")
    b.add_argument("--caption-every", type=int, default=1,
                   help="pipeline: a caption on every K-th input (default 1: on every input)")
    b.add_argument("--num-cpus", type=int, default=None,
                   help="pipeline, read: CPUs of the local Ray cluster (default 2)")
    b.add_argument("--records", type=int, default=200, help="read: images in the archive (default 200)")
    b.add_argument("--shard-size", type=int, default=50, help="read: records per shard (default 50)")
    b.add_argument("--repeats", type=int, default=2,
                   help="read: rounds of job, read, read, job (default 2)")
    b.add_argument("--codec", default=None, help="read: the archive's image codec (default semarc-fast)")
    b.add_argument("--prepare", default=None, metavar="DIR", help="crossdevice: write the shared inputs to DIR")
    b.add_argument("--inputs", default=None, metavar="DIR", help="crossdevice: the inputs written by --prepare")
    b.add_argument("--device", default="cuda", help="crossdevice: the device that encodes (default cuda)")
    b.add_argument("--against", default=None, metavar="DIR",
                   help="crossdevice: the other side's output (comma-separated folders); decode and compare here")
    b.add_argument("--images-only", action="store_true", help="crossdevice: code the images only, not the captions")
    b.add_argument("--cases", default=None, help="fuzz: cases per target, e.g. image=100000,caption=2000,shard=400 "
                   "(the default; image is split over the shipped points, image:NAME=N names one)")
    b.add_argument("--seed", type=int, default=0, help="fuzz: the campaign's seed; generalisation: the bootstrap's")
    b.add_argument("--memory-mb", type=int, default=4096,
                   help="fuzz: address space a case may use beyond its worker's loaded coders (default 4096)")
    b.add_argument("--case-timeout", type=float, default=30.0, help="fuzz: seconds a case may take")
    b.add_argument("--replay", default=None, metavar="TARGET:INDEX", help="fuzz: run one case and print its outcome")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("train-codec", help="train (or resume training) an image codec rate point")
    from semarc.train import options as train_options  # torch-free: every command builds this parser

    train_options.add_arguments(t)
    t.set_defaults(func=cmd_train_codec)

    v = sub.add_parser("train-eval", help="evaluate a training run's state on the corpus's validation split")
    train_options.add_eval_arguments(v)
    v.set_defaults(func=cmd_train_eval)

    k = sub.add_parser("corpus", help="build the training corpus (open photos, fixed validation split) in DIR")
    k.add_argument("dir", nargs="?", default="~/.cache/semarc/corpus",
                   help="output folder (default ~/.cache/semarc/corpus); nothing is written into the repository")
    k.add_argument("--no-install", action="store_true",
                   help="do not apt-get install missing wallpaper packages (their sources are left out)")
    k.add_argument("--sources", default=None, help="another curated list (default: train/corpus_sources.json)")
    k.set_defaults(func=cmd_corpus)
    return p


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Ends the process with ``os._exit`` once everything
    is flushed: with torch and pyarrow both loaded, pyarrow's thread pool
    sometimes aborts the interpreter's teardown ("terminate called without an
    active exception", exit 134), which would hide the job's exit status."""
    rc = run(argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def run(argv: list[str] | None = None) -> int:
    """Run a command; returns its exit status (for in-process callers)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from semarc.jobs.inputs import JobError

    if getattr(args, "one_lmm", False) and not getattr(args, "captioner", None):
        parser.error("--one-lmm needs --captioner MODEL")
    try:
        return args.func(args)
    except JobError as e:
        print(f"semarc {args.cmd}: job failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"semarc {args.cmd}: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - the job failed; say so with the cause
        traceback.print_exc()
        print(f"semarc {args.cmd}: job failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    main()
