"""The ``medcbir`` command: a lazy click group.

Each command lives in its own module and is imported only when it runs, so ``medcbir --help``
and light commands do not pay for importing torch or FAISS.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from medcbir.errors import MedcbirError

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "demo": "medcbir.cli.demo:demo",
    "phantom": "medcbir.cli.phantom:phantom",
    "scan": "medcbir.cli.scan:scan",
    "index": "medcbir.cli.index:index",
    "delete": "medcbir.cli.index:delete",
    "compact": "medcbir.cli.index:compact",
    "verify": "medcbir.cli.index:verify",
    "quarantine": "medcbir.cli.index:quarantine",
    "retrain": "medcbir.cli.index:retrain",
    "search": "medcbir.cli.search:search",
    "evaluate": "medcbir.cli.search:evaluate",
    "assess": "medcbir.cli.assess:assess",
    "train": "medcbir.cli.train:train",
    "export-onnx": "medcbir.cli.train:export_onnx",
    "encoder-spec": "medcbir.cli.encoder_spec:encoder_spec",
    "embed": "medcbir.cli.embed:embed",
    "finetune": "medcbir.cli.finetune:finetune",
    "explain": "medcbir.cli.explain:explain",
    "explain-eval": "medcbir.cli.explain:explain_eval",
    "orthanc-config": "medcbir.cli.pacs:orthanc_config",
    "send": "medcbir.cli.send:send",
    "reproduce": "medcbir.cli.reproduce:reproduce",
}

HELP = {
    "demo": "Run the whole flow on a synthetic CT archive and write an HTML report.",
    "phantom": "Write a synthetic CT archive (real DICOM) with ground-truth labels and masks.",
    "scan": "Walk an archive and report items per modality, transfer syntax and skip reason.",
    "index": "Embed an archive into an index (HDF5 shards + FAISS); resumable.",
    "delete": "Tombstone series or studies in an index.",
    "compact": "Merge small shards and drop tombstoned items (online).",
    "verify": "Recompute checksums and check an index's consistency (--repair, --sources).",
    "quarantine": "List the files indexing skipped (reason, count per reason; paths sealed unless --reveal).",
    "retrain": "Retrain an index's IVF/PQ on a fresh sample of all its items.",
    "search": "Top-K similar images for one or more queries.",
    "evaluate": "Leave-one-out retrieval metrics (MAP@K, AP@K, precision@K, kNN accuracy).",
    "assess": "Label-free quality of an index: cross-patient neighbours vs series geometry.",
    "train": "Adapt an encoder to an archive (kept only if it helps), or train one from scratch.",
    "export-onnx": "Export an encoder checkpoint to ONNX with a parity check.",
    "encoder-spec": "Write the spec that makes your own model (Hugging Face, torch, ONNX, TorchScript, timm) an encoder.",
    "embed": "Write an archive's embeddings with their UIDs to .npz or .parquet (no index).",
    "finetune": "Fine-tune a supervised head (WILDCAT) on an encoder with labels.",
    "explain": "Search and explain the query and its neighbours; write an HTML report.",
    "explain-eval": "Score explanation methods against organ masks.",
    "orthanc-config": "Write an Orthanc configuration that runs the medcbir plugin.",
    "send": "C-STORE an archive to a PACS over one association (every transfer syntax present).",
    "reproduce": "Run a seed paper's protocol (train, evaluate, explain) and write its table, figures and README.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import every command (and torch with it).
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="medcbir")
@click.option("--debug", is_flag=True, envvar="MEDCBIR_DEBUG", help="Show tracebacks for unexpected errors.")
@click.option("--verbose", is_flag=True, help="Also show the logs of the libraries underneath (Ray's INFO lines and its workers' output).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool = False) -> None:
    """medcbir: content-based retrieval of medical images, with explanations.

    Exit status: 0 done; 1 the command failed at run time (one line "error: ..." on stderr: a
    missing index, an undecodable file, a refused association, ...); 2 a usage error (an unknown
    option, a missing argument, a value out of range); 130 interrupted.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if verbose:
        os.environ["MEDCBIR_VERBOSE"] = "1"


#: Exit codes: 0 done; 1 the command ran and failed (a missing index, an undecodable query, a
#: peer that refused, any ``MedcbirError``, and internal errors); 2 the command line itself is
#: wrong (click's usage errors: an unknown option, a missing argument, a bad value); 130 interrupted.
RUNTIME_ERROR = 1
USAGE_ERROR = 2


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the group, turn every failure into one readable line and an exit code."""
    debug = os.environ.get("MEDCBIR_DEBUG") == "1" or "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        # A command that exits with ctx.exit(code) (e.g. `verify --sources` finding changes)
        # returns that code here; commands themselves return None.
        code = cli.main(args=argv, prog_name="medcbir", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("error: interrupted (work committed so far is kept; re-run to resume)", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code if exc.exit_code else USAGE_ERROR
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except MedcbirError as exc:
        if debug:
            raise
        click.echo(f"error: {_one_line(exc)}", err=True)
        return RUNTIME_ERROR
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            raise
        click.echo(f"error: internal error ({exc.__class__.__name__}: {_one_line(exc)}); re-run with --debug for details", err=True)
        return 1
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
