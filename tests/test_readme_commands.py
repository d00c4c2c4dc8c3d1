"""Every command block of README.md (and docs/*.md) parses against the code it names, so the docs
cannot drift from the scripts again (issue 23, item 6).

Each ```bash block is split into commands (line continuations joined, `&&` / `;` chains split,
comments dropped). For `python SCRIPT.py ...`, `torchrun ... SCRIPT.py ...` and `python -m
PACKAGE.MODULE ...` of this repository, the script's own argparse parser runs on the command's
arguments (its `main` is called with `ArgumentParser.parse_args` stopped right after parsing, so
no work starts); a config file argument must exist and load with the command's `--cfg-options`;
a `bash SCRIPT.sh` or `pip install -r FILE` must name a file that exists. Placeholders in capitals
(`YOUR_CSV_PATH`, `step_XXXXXXXXX`) are only parsed, not looked up.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import REPO, load_script

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
REPO_PACKAGES = {"examples", "benchmarks", "tools", "eval", "opensora_vae", "scripts"}


class _Parsed(Exception):
    """Raised by the patched parse_args to stop a script's main right after parsing."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


def command_blocks(markdown: str) -> list[str]:
    """The bodies of the shell-language fenced blocks."""
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", markdown, re.S | re.M)
            if m.group(1).lower() in SHELL_LANGS]


def commands(block: str) -> list[list[str]]:
    """Each command of a block as argv tokens (env assignments in front removed)."""
    joined = re.sub(r"\\\n", " ", block)
    found = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for token in tokens + ["&&"]:
            if token in ("&&", ";", "||"):
                while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                    current.pop(0)
                if current:
                    found.append(current)
                current = []
            else:
                current.append(token)
    return found


def all_commands() -> list[tuple[str, list[str]]]:
    cases = []
    for doc in DOCS:
        for block in command_blocks(doc.read_text()):
            for argv in commands(block):
                cases.append((f"{doc.name}: {' '.join(argv)[:90]}", argv))
    return cases


def _is_placeholder(token: str) -> bool:
    return bool(re.search(r"YOUR_|X{3,}|\.\.\.", token))


def parse_with_script(main, argv: list[str]) -> argparse.Namespace:
    """Runs `main(argv)` until its argparse parser has parsed `argv`; argparse errors exit 2."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        main(argv)
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError("the script's main returned without parsing its arguments")


def script_and_args(argv: list[str]) -> tuple[object, list[str], str] | None:
    """(main function, its arguments, what it is) for a python/torchrun command of this repo."""
    program = Path(argv[0]).name
    if program in ("python", "python3", "torchrun"):
        rest = argv[1:]
        if program != "torchrun" and rest[:1] == ["-m"]:
            module = rest[1]
            if module.split(".")[0] not in REPO_PACKAGES:
                return None  # another package's module (pip, venv, pytest)
            mod = importlib.import_module(module)
            if hasattr(mod, "__path__"):  # a package runs its __main__
                mod = importlib.import_module(module + ".__main__")
            return mod.main, rest[2:], module
        scripts = [i for i, t in enumerate(rest) if t.endswith(".py")]
        if not scripts:
            return None
        path = rest[scripts[0]]
        assert (REPO / path).is_file(), f"{path} does not exist"
        return load_script(REPO / path).main, rest[scripts[0] + 1:], path
    return None


def check_paths(argv: list[str]) -> None:
    """Files of the repository that the command names exist."""
    for token in argv[1:]:
        value = token.split("=", 1)[-1]
        if _is_placeholder(value) or value.startswith(("-", "/", "~", "$")) or "/" not in value:
            continue
        if value.split("/")[0] in {"configs", "scripts", "eval", "tools", "examples", "benchmarks", "docs"}:
            assert (REPO / value).exists(), f"{value} does not exist"


CASES = all_commands()


def test_readme_has_commands_to_check():
    programs = {Path(argv[0]).name for _, argv in CASES}
    assert {"python", "torchrun", "bash", "pip"} <= programs
    assert len(CASES) >= 10


def check_command(argv: list[str]) -> None:
    """Raises (SystemExit from argparse, AssertionError, UserError) when a command has drifted."""
    check_paths(argv)
    program = Path(argv[0]).name
    if program == "bash":
        assert (REPO / argv[1]).is_file(), f"{argv[1]} does not exist"
        return
    if program == "pip" and "-r" in argv:
        assert (REPO / argv[argv.index("-r") + 1]).is_file()
        return
    found = script_and_args(argv)
    if found is None:
        return
    main, args, _ = found
    namespace = parse_with_script(main, args)
    config = getattr(namespace, "config", None)
    if config is not None and not _is_placeholder(config):
        from opensora_vae.config import load_config

        kind = next((k for k in ("inference", "encode") if f"/{k}/" in config), "train")  # configs/vae/<kind>/
        load_config(REPO / config, kind=kind, cfg_options=getattr(namespace, "cfg_options", None) or None)


@pytest.mark.parametrize("argv", [argv for _, argv in CASES], ids=[name for name, _ in CASES])
def test_command_parses(argv):
    check_command(argv)


def test_parse_check_catches_drift():
    """The check itself: an unknown flag, a missing config, a bad --cfg-options key all fail."""
    with pytest.raises(SystemExit):
        check_command(["python", "scripts/train_vae.py", "configs/vae/train/stage1.py", "--spatial-vae", "x"])
    with pytest.raises(AssertionError, match="does not exist"):
        check_command(["python", "scripts/inference_vae.py", "configs/vae/inference/nope.py"])
    from opensora_vae.errors import UserError

    with pytest.raises(UserError):
        check_command(["python", "scripts/train_vae.py", "configs/vae/train/stage1.py", "--cfg-options",
                       "max_step=5"])
    assert commands("A=1 python x.py a \\\n  --b c   # note\n. .venv/bin/activate && pip install -e .\n") == [
        ["python", "x.py", "a", "--b", "c"], [".", ".venv/bin/activate"], ["pip", "install", "-e", "."]]


def test_quickstart_hint_names_real_flags_and_keys():
    """The stage-0 note tells users how real runs get a pretrained spatial VAE: every flag it
    gives train_vae.py exists there, and the config key it names is in the schema."""
    from examples.quickstart.run import STAGE1_SPATIAL_HINT
    from opensora_vae.config import load_config

    train_part = STAGE1_SPATIAL_HINT.split(";")[0]
    flags = re.findall(r"--[a-z][a-z-]*", train_part)
    assert flags
    parser_flags = set()
    original = argparse.ArgumentParser.parse_args

    def record(self, args=None, namespace=None):
        parser_flags.update(s for a in self._actions for s in a.option_strings)
        raise _Parsed(argparse.Namespace())

    argparse.ArgumentParser.parse_args = record
    try:
        with pytest.raises(_Parsed):
            load_script(REPO / "scripts" / "train_vae.py").main(["x"])
    finally:
        argparse.ArgumentParser.parse_args = original
    assert set(flags) <= parser_flags, set(flags) - parser_flags
    key = re.search(r"(model\.[\w.]+)=", train_part).group(1)
    cfg = load_config(REPO / "configs" / "vae" / "train" / "stage1.py", cfg_options={key: "x"})
    assert cfg.model.spatial.from_pretrained == "x"


def test_readme_latent_frame_examples_match_the_model():
    """README's worked example of the chunk formula (`20, 34, 51 frames give 6, 10, 15`)."""
    from tests.helpers import build_tiny_pipeline

    readme = (REPO / "README.md").read_text()
    match = re.search(r"\(([\d, ]+)\s+frames\s+give\s+([\d, ]+)\s+latent\s+frames\)", readme)
    frames, latents = ([int(v) for v in group.split(",")] for group in match.groups())
    pipe = build_tiny_pipeline()
    assert [pipe.latent_frames(t) for t in frames] == latents


def test_fault_doc_ckpt_every_zero_is_valid():
    """docs/fault_behaviour.md: `ckpt_every=0` means "final checkpoint only" (valid); a negative
    value is the exit-2 case."""
    from opensora_vae.config import load_config
    from opensora_vae.errors import UserError

    stage1 = REPO / "configs" / "vae" / "train" / "stage1.py"
    assert load_config(stage1, cfg_options=["ckpt_every=0"]).ckpt_every == 0
    with pytest.raises(UserError):
        load_config(stage1, cfg_options=["ckpt_every=-1"])
    doc = (REPO / "docs" / "fault_behaviour.md").read_text()
    exit2_rows = [line for line in doc.splitlines() if "exit 2" in line]
    assert not any("`ckpt_every=0`," in line for line in exit2_rows)
