"""The domains a RunSpec names: built-in and file prompt sets, and its data PATH (issue 25).

Every data row is read and checked here, before the run takes its output folder: a bad row is
one line naming the file and the line, and nothing is trained or written.
"""

from __future__ import annotations

from kd_core.config import RunSpec
from kd_core.data_files.domain import DataDomain, DataSettings, load_data_domain
from kd_core.distiller import Domain
from kd_core.domains import DomainError, check_domain_name, resolve_domains


def data_settings(spec: RunSpec) -> DataSettings:
    cfg = spec.config
    return DataSettings(
        teacher_answers=cfg.teacher_answers,
        train_on=cfg.train_on,
        prompt_key=cfg.prompt_key,
        completion_key=cfg.completion_key,
        teacher_kwargs=dict(spec.teacher_chat_template_kwargs),
        student_kwargs=dict(spec.student_chat_template_kwargs),
    )


def data_domain(spec: RunSpec, allow_download: bool = False) -> DataDomain | None:
    """The spec's data PATH read and split, or None when it names none."""
    if not spec.data:
        return None
    dom = load_data_domain(spec.data, data_settings(spec), spec.config.seed, allow_download)
    check_domain_name(dom.name)
    return dom


def spec_domains(spec: RunSpec, allow_download: bool = False) -> dict[str, Domain]:
    """{name: prompts or DataDomain}: the named domains and domain files, then the data. With
    `data` and neither domains nor domain files named, the data alone is distilled."""
    dom = data_domain(spec, allow_download)
    out: dict[str, Domain] = {}
    if dom is None or spec.domains or spec.domain_files:
        out.update(resolve_domains(spec.domains, spec.domain_files))
    if dom is not None:
        if dom.name in out:
            raise DomainError(
                f"data: {dom.spec} makes a domain named {dom.name!r}, which is already a "
                "domain of this run; rename the folder or file"
            )
        out[dom.name] = dom
    return out
