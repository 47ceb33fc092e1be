"""What a model *is*, as kd keys caches and guards resumes with it: a hash of its weights and
a hash of its tokenizer, never its path alone.

A teacher cache keyed without the teacher's identity once let a second teacher train on the
first one's soft targets (docs/ARCHITECTURE.md, "Identities and keys"). So an identity has no
empty default: `ModelIdentity` refuses a blank field, and `identify_model` either hashes every
byte of the weights or raises a one-line ModelError naming the file it could not read.

Hashing every byte costs a read of the weights (about 1-2 GB/s); a memo in the cache folder,
keyed by each file's path, size, modification time and inode, makes the second run free. A
file replaced in place (a new download, a re-quantization, a fused adapter) changes its
modification time or inode, so it is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from kd_core.errors import one_line
from kd_core.files.atomic import atomic_write_json
from kd_core.files.user_dirs import default_cache_dir
from kd_core.models.load import ModelError

# Everything that decides which ids a text becomes, how a prompt is rendered and which ids end
# an answer: a tokenizer or chat template changed beside unchanged weights changes the cache.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
MEMO_FILE = "fingerprints.json"
SHORT = 12  # characters of a fingerprint shown to people


class IdentityError(ModelError):
    """A model whose files cannot be read for its fingerprint (one line naming the file)."""


@dataclass(frozen=True)
class ModelIdentity:
    """A model as caches and checkpoints know it. Every field is required and non-blank."""

    path: str
    weights: str  # sha256 of config.json and every *.safetensors file's bytes
    tokenizer: str  # sha256 of the tokenizer and chat-template files present

    def __post_init__(self) -> None:
        for name in ("path", "weights", "tokenizer"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"ModelIdentity.{name}: required, got a blank value")

    @property
    def short(self) -> str:
        return self.weights[:SHORT]

    def describe(self) -> str:
        return f"{self.path} ({self.short})"


def pair_fields(teacher: ModelIdentity, student: ModelIdentity) -> dict[str, str]:
    """Both models as kd writes them down (the resume fingerprint, kd_summary.json): path,
    weights hash and tokenizer hash of each."""
    return {
        "teacher": teacher.path,
        "teacher_weights": teacher.weights,
        "teacher_tokenizer": teacher.tokenizer,
        "student": student.path,
        "student_weights": student.weights,
        "student_tokenizer": student.tokenizer,
    }


def identify_model(path: Path, role: str, memo_dir: Path | None = None) -> ModelIdentity:
    """The identity of the model folder `path` (`role` names it in errors)."""
    memo = _Memo(memo_dir or default_cache_dir())
    weights = hashlib.sha256()
    files = [path / "config.json", *sorted(path.glob("*.safetensors"))]
    for f in files:
        weights.update(f.name.encode() + b"\x00")
        weights.update(memo.digest(f, role).encode() + b"\x00")
    memo.save()
    tokenizer = tokenizer_digest(tokenizer_files(path, role))
    return ModelIdentity(str(path), weights.hexdigest()[:32], tokenizer)


def tokenizer_files(path: Path, role: str) -> dict[str, bytes]:
    """The bytes of the TOKENIZER_FILES a model folder has, by name."""
    return {name: _read(path / name, role) for name in TOKENIZER_FILES if (path / name).is_file()}


def tokenizer_digest(files: dict[str, bytes]) -> str:
    """The tokenizer field of a ModelIdentity: one hash over the files' names and bytes, in
    TOKENIZER_FILES order (a remote teacher's client recomputes it over the files the server
    sent, so a tokenizer altered on the way is refused)."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if name in files:
            h.update(name.encode() + b"\x00")
            h.update(files[name] + b"\x00")
    return h.hexdigest()[:32]


def _read(f: Path, role: str) -> bytes:
    try:
        return f.read_bytes()
    except OSError as e:
        raise IdentityError(
            f"{role}: cannot read {f} for its fingerprint ({one_line(e)})"
        ) from None


class _Memo:
    """sha256 of whole files, remembered by (path, size, mtime, inode)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MEMO_FILE
        self.entries: dict[str, dict[str, object]] = {}
        self.changed = False
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass  # no memo yet, or a damaged one: hash again

    def digest(self, f: Path, role: str) -> str:
        try:
            st = f.stat()
        except OSError as e:
            raise IdentityError(
                f"{role}: cannot read {f} for its fingerprint ({one_line(e)})"
            ) from None
        key = str(f.resolve())
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        seen = self.entries.get(key)
        if seen is not None and all(seen.get(k) == v for k, v in stamp.items()):
            sha = seen.get("sha256")
            if isinstance(sha, str) and len(sha) == 64:
                return sha
        try:
            with open(f, "rb") as fh:
                sha = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError as e:
            raise IdentityError(
                f"{role}: cannot read {f} for its fingerprint ({one_line(e)})"
            ) from None
        self.entries[key] = {**stamp, "sha256": sha}
        self.changed = True
        return sha

    def save(self) -> None:
        if not self.changed:
            return
        try:
            os.makedirs(self.path.parent, exist_ok=True)
            atomic_write_json(self.path, self.entries)
        except OSError:
            pass  # an unwritable cache folder costs a re-hash next time, nothing else
