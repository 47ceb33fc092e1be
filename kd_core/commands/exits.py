"""Exit statuses of `kd` and which errors are the user's input (status 2, one line)."""

from __future__ import annotations

from kd_core.config import ConfigError
from kd_core.data_files import DataFileError
from kd_core.distiller import NoExamplesError
from kd_core.domains import DomainError
from kd_core.models.load import ModelError
from kd_core.remote.transport import FingerprintMismatch, TeacherRefused, TeacherUnsupported
from kd_core.run.outputs import OutputError
from kd_core.run.record import RunLockedError
from kd_core.teacher.cache import CacheError
from kd_core.train.checkpoints import ResumeError
from kd_core.vocab.plan import VocabError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_STOPPED = 3  # a stop (signal, control word, dashboard) ended the run early; --resume
# The remote teacher could not be reached, or went away mid-run (the run stopped after its last
# finished step with a checkpoint): --resume once it is back.
EXIT_TEACHER_GONE = 4


class UsageError(Exception):
    """A command line kd cannot run as written (one line, exit status 2)."""


# Raised for what the user gave (settings, models, folders, data): exit status 2, not 1.
INPUT_ERRORS: tuple[type[Exception], ...] = (
    UsageError,
    ConfigError,
    DataFileError,
    DomainError,
    ModelError,
    VocabError,
    OutputError,
    CacheError,
    ResumeError,
    NoExamplesError,
    RunLockedError,
    TeacherRefused,  # a wrong token, a bad request: what was given
    TeacherUnsupported,
    FingerprintMismatch,
)
