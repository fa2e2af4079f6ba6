"""The `kn` command: parses arguments and calls the library, nothing more.

    kn data bios --kind bioS --n 1000 --augment multi5+permute --seed 0 --out data/bios
    kn data bios --n 1000 --augment multi5+permute --variant hard --out data/hard   # kn.data.bios.VARIANTS
    kn data import other_bios.jsonl --out data/imported --skip-bad
    kn data biod --n 1000 --k 4 --c 2 --d 100 --l 2 --t 50 --out data/biod
    kn data injection --n-paragraphs 40 --out data/injection
    kn data rewrite --bios data/bios/bios.jsonl --model path/to/local/causal-lm --out data/bior.jsonl
    kn train --config run.toml [--resume | --overwrite]   # see kn.train_config.TrainConfig
    kn run data --profile cpu      # execute a chapter with papermill (or `kn run all`)
    kn sweep capacity --profile cpu  # train a chapter's sweep without the notebook (two at once share it)
    kn search r1 n2k --profile cpu   # one pre-registered setting of R1's regime search (kn.regime), resumable
    kn search r1 all --jobs 6        # the whole search, then its confirmation on 3 seeds (one GPU or many cores)
    kn search r7 all --jobs 2        # R7's recipe search for the masked model (kn.bidirectional_search), resumable
    kn book                        # build _build/html from the committed chapters
    kn site                        # check the built pages in headless Chromium (screenshots in _build/screenshots)

Exit codes: 0 done; 1 an OS error such as a full disk (one line naming the path); 2 bad input (one
line on stderr); 75 training stopped by SIGTERM/SIGINT after writing its checkpoint (rerun with
--resume), or an import stopped before its dataset was complete (run it again). Writing into a
folder that already holds a dataset or a run needs --overwrite (or --resume for a run);
`kn data bios|biod|import --out` takes only a new or empty folder otherwise, checked before any
module that takes seconds to import.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Optional

import typer

from kn.errors import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="kn: knowledge storage, extraction and capacity on synthetic data.")
data_app = typer.Typer(no_args_is_help=True, help="Generate datasets.")
app.add_typer(data_app, name="data")


VALID_HELP = "share of train_people held out as the validation slice (never trained on; chooses recipes)"


def _summary(path, **fields):
    typer.echo(json.dumps({"out": str(path), **fields}))


@data_app.command("bios")
def data_bios(kind: str = typer.Option("bioS", help="bioS | bioR"),
              n: int = typer.Option(1000, help="number of people"),
              augment: str = typer.Option("single", help="single | multiM | permute[P] | fullname, joined with '+'"),
              seed: int = 0,
              out: str = typer.Option(..., help="output folder"),
              train_fraction: float = typer.Option(0.5, help="share of people whose QAs are trained on"),
              vocab_size: int = 4096,
              n_celebrity: int = typer.Option(0, help="Result 6: celebrities added beside the n (minority) people"),
              celebrity_augment: str = "multi5+permute",
              valid_fraction: float = typer.Option(0.0, help=VALID_HELP),
              variant: Optional[str] = typer.Option(None, help="bioS style preset: kn | mid | they | long | hard (all three)"),
              value_position: Optional[str] = typer.Option(None, help="kn | mid: more values mid-sentence or possessive"),
              pronouns: Optional[str] = typer.Option(None, help="gendered | mixed: they/their after He/She"),
              length: Optional[str] = typer.Option(None, help="kn | long: filler sentences between the facts"),
              overwrite: bool = typer.Option(False, help="replace the dataset already in --out")):
    """Biographies, QA, tokenizer and token arrays (bioS or bioR-style). The style options override --variant's."""
    from kn.data.bios import variant_style
    from kn.data.dataset import BiosConfig, make_dataset
    style = variant_style(variant, value_position=value_position, pronouns=pronouns, length=length)
    cfg = BiosConfig(kind, n, augment, seed, train_fraction, vocab_size, n_celebrity, celebrity_augment, valid_fraction,
                     **style)
    ds = make_dataset(cfg, out, overwrite=overwrite)
    _summary(out, people=len(ds.people), bios=len(ds.bios), qa=len(ds.qa), tokens=int(len(ds.bios_tokens.ids)))


@data_app.command("import")
def data_import(file: str = typer.Argument(..., help="biography JSONL: name, six attributes, one or more texts per record"),
                out: str = typer.Option(..., help="output folder"),
                seed: int = typer.Option(0, help="seed of the train_people / test_people split"),
                train_fraction: float = typer.Option(0.5, help="share of people whose QAs are trained on"),
                valid_fraction: float = typer.Option(0.0, help=VALID_HELP),
                vocab_size: int = 4096,
                skip_bad: bool = typer.Option(False, help="skip records that fail validation and count them"),
                overwrite: bool = typer.Option(False, help="replace a dataset already in --out")):
    """A dataset folder (QA, tokenizer, token spans, meta) from biographies made elsewhere; SIGTERM or
    SIGINT stops it with exit code 75 and no temporary file left."""
    import atexit
    import gc
    from kn.data.folder import check_dataset_out
    check_dataset_out(out, overwrite, inputs=(file,))       # before kn.data.importer imports transformers
    from kn.data.importer import EXIT_STOPPED, ImportConfig, Stopped, import_bios, signals_stop
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)   # exit without the final collections over torch's objects (~0.8 s after the summary)
    try:
        with signals_stop():
            ds, skipped = import_bios(ImportConfig(file, seed, train_fraction, vocab_size, skip_bad, valid_fraction),
                                      out, overwrite)
    except Stopped as e:
        typer.echo(f"kn: error: import {e} before its dataset was complete (temporary files removed); run it again",
                   err=True)
        raise typer.Exit(EXIT_STOPPED)
    _summary(out, people=len(ds.is_train), bios=len(ds.bios), qa=len(ds.qa), tokens=int(len(ds.bios_tokens.ids)),
             skipped=len(skipped))


@data_app.command("biod")
def data_biod(n: int = 1000, k: int = 4, c: int = 2, d: int = 100, l: int = 2, t: int = 50,  # noqa: E741
              seed: int = 0, domain_token: bool = False,
              junk_ratio: float = typer.Option(0.0, help="junk tokens per useful token, re-drawn every epoch"),
              records: bool = typer.Option(True, help="also write biod.jsonl (epoch-0 biographies, for reading)"),
              out: str = typer.Option(..., help="output folder"),
              overwrite: bool = typer.Option(False, help="replace the dataset already in --out")):
    """bioD(N, K, C, D, L, T) of Part 3.3: a folder `kn train` pretrains on (re-rendered every epoch)."""
    from kn.data.folder import check_dataset_out
    check_dataset_out(out, overwrite)                        # before kn.data.biod imports transformers
    from kn.data.biod import BioDConfig, write_biod
    cfg = BioDConfig(n=n, k=k, c=c, d=d, l=l, t=t, seed=seed, domain_token=domain_token)
    write_biod(cfg, out, junk_ratio=junk_ratio, records=records, overwrite=overwrite)
    _summary(out, people=n)


@data_app.command("injection")
def data_injection(n_paragraphs: int = 40, n_paraphrases: int = 10, n_probes: int = 5, seed: int = 0,
                   out: str = typer.Option(..., help="output folder")):
    """Fictional-knowledge paragraphs with paraphrases and probes (Chang et al.)."""
    from kn.data.injection import InjectionConfig, generate_injection, write_injection
    records = generate_injection(InjectionConfig(n_paragraphs=n_paragraphs, n_paraphrases=n_paraphrases,
                                                 n_probes=n_probes, seed=seed))
    write_injection(records, out)
    _summary(out, paragraphs=len(records))


@data_app.command("rewrite")
def data_rewrite(bios: str = typer.Option(..., help="bioS bios.jsonl to rewrite"),
                 model: str = typer.Option(..., help="local Hugging Face causal-LM folder"),
                 out: str = typer.Option(..., help="output JSONL"),
                 seed: int = 0, device: str = "cpu", limit: Optional[int] = None):
    """bioR by a local rewrite model: keeps outputs that still hold all six values."""
    from kn.data.bior import rewrite_with_model
    from kn.data.records import load_bios, write_jsonl
    records = load_bios(bios)[:limit]
    kept, dropped = rewrite_with_model(records, model, seed=seed, device=device)
    write_jsonl(kept, out)
    _summary(out, kept=len(kept), dropped=dropped)


@app.command("train")
def train_cmd(config: str = typer.Option(..., help="TOML file: TrainConfig keys and a [model] table"),
              resume: bool = typer.Option(False, help="continue from out/checkpoint (same settings)"),
              overwrite: bool = typer.Option(False, help="start again in an out folder that holds a run")):
    """Pretrain, mixed-train or QA-finetune one model (accelerate launch works too)."""
    from kn.train import EXIT_INTERRUPTED, train
    from kn.train_config import load_config
    summary = train(load_config(config), resume=resume, overwrite=overwrite)
    typer.echo(json.dumps({k: summary[k] for k in ("mode", "steps", "interrupted", "final_loss", "tokens_per_s",
                                                   "n_params", "mfu", "vocab")}
                          | {"precision": f"{summary['precision']['dtype']}+{summary['precision']['attention']}"}))
    if summary["interrupted"]:
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command("run")
def run(chapter: str = typer.Argument(..., help="chapter name (book/<name>.ipynb) or 'all'"),
        profile: str = typer.Option("smoke", help="smoke | class | cpu | gpu | paper")):
    """Execute a chapter with papermill into the book, writing its result files beside it."""
    from kn.book import chapters, run_chapter
    for name in chapters() if chapter == "all" else [chapter]:
        typer.echo(f"{name}: {run_chapter(name, profile)}")


@app.command("sweep")
def sweep(chapter: str = typer.Argument(..., help="capacity"),
          profile: str = typer.Option("smoke", help="smoke | class | cpu | gpu | paper")):
    """Train a chapter's sweep into its results folder, skipping finished points; several started at once
    share the points. `kn run CHAPTER` then makes the page from the rows."""
    from kn.book import results_dir, runs_dir
    from kn.capacity import capacity_study
    if chapter != "capacity":
        raise DataError(f"chapter: got {chapter!r}; allowed: capacity")
    study = capacity_study(profile, results_dir(chapter, profile), runs_dir(chapter, profile))
    _summary(results_dir(chapter, profile), done=len(study["rows"]), missing=len(study["missing"]))


@app.command("search")
def search(claim: str = typer.Argument(..., help="r1 | r7"),
           setting: Optional[str] = typer.Argument(None, help="a setting of kn.regime.SETTINGS (r1) or "
                                                             "kn.bidirectional_search.ALL (r7), or confirm (r1: score the "
                                                             "selected one on test_people, 3 seeds), or all (the search, "
                                                             "then for r1 the confirmation); none: list them"),
           profile: str = typer.Option("cpu", help="cpu | smoke (its tiny equivalent)"),
           seed: int = typer.Option(0, help="r1: the run's seed (the search is seed 0; seeds 1 and 2 confirm)"),
           jobs: int = typer.Option(1, help="with all: runs at a time, each its own process"),
           progress: bool = typer.Option(False, help="a progress bar on stderr")):
    """Run one pre-registered setting of a regime search (resumes an interrupted one; exit 75 when a
    signal stops it), the confirmation, or the whole protocol; or list the settings with their
    expected time, rows so far and the choice."""
    from kn.train import EXIT_INTERRUPTED, Interrupted
    if claim not in ("r1", "r7"):
        raise DataError(f"claim: got {claim!r}; allowed: r1, r7")
    try:
        if claim == "r7":
            _search_r7(setting, profile, jobs)
        else:
            _search_r1(setting, profile, seed, jobs, progress)
    except Interrupted as e:
        typer.echo(f"kn: {e}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)


def _search_r1(setting, profile, seed, jobs, progress):
    from kn.regime import SETTINGS, confirm, expected_hours, run_all, run_setting, search_rows, selected
    if setting is None:
        done = {r["setting"]: r for r in search_rows(profile)}
        for name in SETTINGS:
            typer.echo(json.dumps({"setting": name, "expected_hours": round(expected_hours(name, profile), 2),
                                   "row": done.get(name)}))
        typer.echo(json.dumps({"selected": selected(profile)}))
        return
    if setting not in ("all", "confirm"):
        typer.echo(json.dumps(run_setting(setting, profile, progress, seed)))
        return
    record = run_all(profile, jobs, log=typer.echo) if setting == "all" else confirm(profile, progress)
    typer.echo(json.dumps({"setting": record["setting"],
                           "test_qa": {s: r["qa"]["test"]["mean"] for s, r in record["seeds"].items()}}))


def _search_r7(setting, profile, jobs):
    from kn.bidirectional_search import ALL, expected_minutes, run_search, run_setting, search_rows, selected, stop_state
    if setting is None:
        done = {r["setting"]: r for r in search_rows(profile)}
        for name in ALL:
            typer.echo(json.dumps({"setting": name, "expected_minutes": round(expected_minutes(name)), "row": done.get(name)}))
        typer.echo(json.dumps({"selected": selected(profile), "stop": stop_state(profile)}))
    elif setting == "all":
        record = run_search(profile, jobs, log=typer.echo)
        typer.echo(json.dumps({"selected": record["selected"], "stop": record["stop"]}))
    else:
        typer.echo(json.dumps(run_setting(setting, profile)))


@app.command("book")
def book(strict: bool = typer.Option(True, help="treat Sphinx warnings as errors"),
         profile: Optional[str] = typer.Option(None, help="preview the chapters run at this profile (kn run CH --profile P) "
                                                          "in _build/P, the others as published")):
    """Build _build/html from the committed, executed chapters (executes nothing); with --profile, a preview."""
    from kn.book import build_book, build_preview
    if profile is not None:
        from kn.profiles import check_profile
        typer.echo(str(build_preview(check_profile(profile))))
        return
    typer.echo(str(build_book(warnings_as_errors=strict)))


@app.command("site")
def site(html: str = typer.Option("_build/html", help="the built book")):
    """Open every page of the built book in headless Chromium and list what shows broken (exit 1 if any);
    screenshots go to _build/screenshots."""
    from kn.site import check_site
    problems = check_site(html)
    for page, found in problems.items():
        typer.echo(f"{page}: {'ok' if not found else '; '.join(found)}")
    if any(problems.values()):
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point: a DataError (bad parameter or file) is one line on stderr and exit code 2; an
    OSError (disk full, permission denied) one line naming the path, exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rc = app(args=argv, standalone_mode=False)
    except DataError as e:
        typer.echo(f"kn: error: {e}", err=True)
        return 2
    except OSError as e:
        typer.echo(f"kn: error: {e.filename}: {e.strerror or e}" if e.filename else f"kn: error: {e}", err=True)
        return 1
    except Exception as e:  # click usage errors (unknown option, bad type) have their own message
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
