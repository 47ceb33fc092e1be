"""Distil on your own data (issue 25): data files read, their format detected, rows rendered
per model with the mask of the given answer, held-out splits.

Public API (everything else in the subpackage is internal):

Reading (formats.py, hf.py); every refusal is a one-line DataFileError(ValueError) naming the
file, the line and what was expected:

    read_data(path, prompt_key="prompt", completion_key="completion", max_bytes=1 GiB)
        -> DataSource(path, train: DataFile, valid: DataFile | None, test: DataFile | None)
        A folder with train.jsonl (+ valid.jsonl, test.jsonl) or one file (train only).
    read_data_file(path, prompt_key, completion_key, max_bytes) -> DataFile
    read_hf_dataset("hf:NAME[:split]", allow_download=False, prompt_key, completion_key)
        -> DataSource   (needs the optional `datasets` library; offline unless allowed)
    is_hf_spec(spec) -> bool
    DataFile(path, format: Format, rows: tuple[Row, ...]); .has_answers
    Format = Literal["chat", "completions", "text", "prompts"]
    Row = ChatRow(line, messages: tuple[Message, ...], tools) | CompletionRow(line, prompt,
        completion) | TextRow(line, text) | PromptRow(line, prompt); `line` is the row's
        line number in its file (1-based; "row N" for a Hugging Face split)
    Message(role, content, extra); ChatRow.assistant_turns: the trainable message indices
    row_dict(row) -> dict: the row's content in standard key names (no line number)

Rendering (render.py), per model:

    render_row(tokenizer, row, *, train_on="all_assistant" | "last",
               chat_template_kwargs=None, stop_tokens=(), source="") -> Rendered
    render_prompt(tokenizer, row, *, chat_template_kwargs=None, source="") -> Rendered
        the conversation before the last answer, ready for the model to answer (generate)
    Rendered(text, ids [n] int32, offsets [n, 2] int32, trained [n] bool,
             spans: tuple[AssistantSpan, ...], templated)
    AssistantSpan(message, start, end, stop_end): content = text[start:end], the end of
        turn trained with it = text[end:stop_end]
    stop_markers(tokenizer, stop_tokens=()) -> tuple[str, ...]

Splits (splits.py):

    split_rows(source, seed, fraction=0.05) -> Split(train, held_out, held_out_from
        "valid" | "seeded", held_out_path, held_out_lines)
    held_out_indices(rows, seed, fraction=0.05) -> tuple[int, ...]
"""

from kd_core.data_files.bounded import MAX_DATA_FILE_BYTES
from kd_core.data_files.errors import DataFileError
from kd_core.data_files.formats import (
    FORMATS,
    ChatRow,
    CompletionRow,
    DataFile,
    DataSource,
    Format,
    Message,
    PromptRow,
    Row,
    TextRow,
    read_data,
    read_data_file,
    row_dict,
)
from kd_core.data_files.hf import is_hf_spec, read_hf_dataset
from kd_core.data_files.render import (
    AssistantSpan,
    Rendered,
    TrainOn,
    render_prompt,
    render_row,
    stop_markers,
)
from kd_core.data_files.splits import HELD_OUT_FRACTION, Split, held_out_indices, split_rows

__all__ = [
    "FORMATS",
    "HELD_OUT_FRACTION",
    "MAX_DATA_FILE_BYTES",
    "AssistantSpan",
    "ChatRow",
    "CompletionRow",
    "DataFile",
    "DataFileError",
    "DataSource",
    "Format",
    "Message",
    "PromptRow",
    "Rendered",
    "Row",
    "Split",
    "TextRow",
    "TrainOn",
    "held_out_indices",
    "is_hf_spec",
    "read_data",
    "read_data_file",
    "read_hf_dataset",
    "render_prompt",
    "render_row",
    "row_dict",
    "split_rows",
    "stop_markers",
]
